// The shell: sign-in, the session (sessionStorage), the sections and their hash routes.
import { useEffect, useRef, useState } from "preact/hooks";
import { call, loadSession, saveSession } from "./api.js";
import { Notice } from "./ui.jsx";
import { Events, Runs, DeadLetters, Limits } from "./tenant.jsx";
import { Tenants, Rates } from "./admin.jsx";

const SECTIONS = {
  tenant: [
    { id: "events", label: "Events", page: Events },
    { id: "runs", label: "Saved notifications", page: Runs },
    { id: "dlq", label: "Dead letters", page: DeadLetters },
    { id: "limits", label: "Limits & usage", page: Limits },
  ],
  admin: [
    { id: "tenants", label: "Tenants", page: Tenants },
    { id: "rates", label: "Live rates", page: Rates },
  ],
};

function currentHash() {
  return window.location.hash.replace(/^#\/?/, "");
}

function useHash() {
  const [hash, setHash] = useState(currentHash());
  useEffect(() => {
    const on = () => setHash(currentHash());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return hash;
}

export function App() {
  const [session, setSession] = useState(loadSession());
  const signOut = () => {
    saveSession(null);
    setSession(null);
    window.location.hash = "";
  };
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <h1>
          <img src="/console/icon.svg" alt="" width="24" height="24" /> Herald console
        </h1>
        {session && (
          <div class="who">
            <span>
              {session.role === "admin" ? "Operator (admin token)" : <>Tenant <strong>{session.name}</strong></>}
            </span>
            <button type="button" class="secondary" onClick={signOut}>
              Sign out
            </button>
          </div>
        )}
      </header>
      {session ? <Signed session={session} onExpired={signOut} /> : <SignIn onSignedIn={setSession} />}
    </>
  );
}

function SignIn({ onSignedIn }) {
  const [role, setRole] = useState("tenant");
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setError("");
    const t = token.trim();
    if (!t) {
      setError("Enter a token.");
      return;
    }
    setBusy(true);
    try {
      let name = "";
      if (role === "tenant") {
        name = (await call(t, "GET", "/v2/limits")).tenant;
      } else {
        await call(t, "GET", "/admin/tenants");
      }
      const session = { role, token: t, name };
      saveSession(session);
      window.location.hash = `#/${SECTIONS[role][0].id}`;
      onSignedIn(session);
    } catch (err) {
      let message = err.message;
      if (err.status === 401) {
        message = `Sign-in refused (401): Herald does not accept this ${role === "admin" ? "admin" : "tenant"} token.`;
      } else if (err.status === 404 && role === "admin") {
        message = `${err.message}. The admin routes are not on this address: they are disabled (no server.admin_token) or on the operator listener (server.operator_listen) — open /console there.`;
      } else if (err.status === 404) {
        message = `${err.message}. This address serves no tenant routes (the operator listener?): open /console on the API's address.`;
      }
      setError(message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" tabIndex={-1} class="signin">
      <h2>Sign in</h2>
      <p class="muted">
        The token stays in this tab's session storage and is sent only to this Herald, in the Authorization header.
      </p>
      <form onSubmit={submit} class="card">
        <fieldset>
          <legend>Sign in as</legend>
          <label class="radio">
            <input type="radio" name="role" value="tenant" checked={role === "tenant"} onChange={() => setRole("tenant")} />
            Tenant (a tenant token)
          </label>
          <label class="radio">
            <input type="radio" name="role" value="admin" checked={role === "admin"} onChange={() => setRole("admin")} />
            Operator (the admin token)
          </label>
        </fieldset>
        <label for="token">Token</label>
        <input
          id="token"
          type="password"
          autocomplete="off"
          spellcheck={false}
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          aria-describedby={error ? "signin-error" : undefined}
          aria-invalid={error ? "true" : undefined}
        />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <div id="signin-error">
          <Notice error>{error}</Notice>
        </div>
      </form>
    </main>
  );
}

function Signed({ session, onExpired }) {
  const hash = useHash();
  const sections = SECTIONS[session.role];
  const [id, ...rest] = hash.split("/");
  const section = sections.find((s) => s.id === id) || sections[0];
  const heading = useRef(null);
  const first = useRef(true);
  useEffect(() => {
    // Keyboard and screen-reader users land on the new section's heading.
    if (first.current) first.current = false;
    else heading.current?.focus();
  }, [section.id]);
  const Page = section.page;
  return (
    <>
      <nav aria-label="Sections" class="tabs">
        <ul>
          {sections.map((s) => (
            <li key={s.id}>
              <a href={`#/${s.id}`} aria-current={s.id === section.id ? "page" : undefined}>
                {s.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        <h2 ref={heading} tabIndex={-1}>
          {section.label}
        </h2>
        <Page session={session} onExpired={onExpired} arg={decodeURIComponent(rest.join("/"))} />
      </main>
    </>
  );
}
