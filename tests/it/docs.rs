//! Docs are part of the feature: every configuration key is in the README's table, and
//! every Lua script is described in lua/README.md and has a header contract.

#[test]
fn every_config_key_is_documented_in_the_readme() {
    let defaults: toml::Table = herald::config::DEFAULT_TOML.parse().unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (section, keys) in &defaults {
        for key in keys.as_table().unwrap().keys() {
            let row = format!(
                "| `{section}.{key}` | `HERALD_{}__{}` |",
                section.to_uppercase(),
                key.to_uppercase()
            );
            assert!(
                readme.contains(&row),
                "README configuration table lacks {section}.{key}"
            );
        }
    }
}

#[test]
fn every_script_is_documented() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lua");
    let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
    let mut count = 0;
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for sub in ["", "workflow"] {
        for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for path in files {
        if path.extension().is_some_and(|e| e == "lua") {
            count += 1;
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .trim_start_matches('/')
                .to_owned();
            assert!(
                readme.contains(&format!("`{name}`")),
                "lua/README.md lacks {name}"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("--[["), "{name} lacks its header");
            assert!(
                text.contains("KEYS[1]") && text.contains("Returns"),
                "{name}: header lacks KEYS/Returns"
            );
        }
    }
    assert_eq!(
        count,
        herald::store::scripts::all().len(),
        "every script file has a wrapper"
    );
}
