// Builds the console into dist/ with fixed file names (no content hashes): the files are
// committed and compiled into the binary (src/api/console.rs), which serves them under
// /console/. No source maps, no module-preload polyfill, nothing inlined as data: URLs
// (the Content-Security-Policy allows only 'self').
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "",
    assetsInlineLimit: 0,
    sourcemap: false,
    modulePreload: { polyfill: false },
    target: "es2020",
    rolldownOptions: {
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "[name].js",
        assetFileNames: "app[extname]",
      },
    },
  },
});
