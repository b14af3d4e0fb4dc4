// The tenant's sections: an event's waiters and history, a run's saved notifications,
// dead letters (retry, delete), limits and usage.
import { useEffect, useRef, useState } from "preact/hooks";
import { call, seg } from "./api.js";
import { Notice, Table, bodyText, bytes, clock, clockMs, relative, span, useNow, usePoll } from "./ui.jsx";

const ID = /^[A-Za-z0-9._:-]{1,256}$/;

function IdForm({ label, id, value, onSubmit, button }) {
  const [text, setText] = useState(value || "");
  const [error, setError] = useState("");
  // The field follows `value` (the id in the address) when it changes, and only then: an
  // effect that also ran on mount would run after the first paint (up to 100 ms later in
  // a busy or background tab) and erase what was typed or pasted meanwhile.
  const shown = useRef(value || "");
  useEffect(() => {
    if ((value || "") !== shown.current) {
      shown.current = value || "";
      setText(value || "");
    }
  }, [value]);
  return (
    <form
      class="search"
      onSubmit={(e) => {
        e.preventDefault();
        const v = text.trim();
        if (!ID.test(v)) {
          setError("Ids are 1–256 characters of letters, digits and . _ : -");
          return;
        }
        setError("");
        onSubmit(v);
      }}
    >
      <label for={id}>{label}</label>
      <div class="row">
        <input id={id} value={text} onInput={(e) => setText(e.currentTarget.value)} autocomplete="off" spellcheck={false} />
        <button type="submit">{button}</button>
      </div>
      <Notice error>{error}</Notice>
    </form>
  );
}

function LiveToggle({ live, setLive, id }) {
  return (
    <label class="check" for={id}>
      <input id={id} type="checkbox" checked={live} onChange={(e) => setLive(e.currentTarget.checked)} /> Refresh every 2 s
    </label>
  );
}

const OUTCOME_TEXT = {
  registered: "waiter registered",
  consumed: "saved notification consumed",
  notified: "notified",
  nobody_waiting: "notified, nobody waiting",
  saved: "saved for the run",
  timed_out: "timed out",
  delivered: "delivered",
  attempt_failed: "attempt failed",
  dead_lettered: "dead-lettered",
};

export function Events({ session, arg }) {
  const event = arg && ID.test(arg) ? arg : "";
  const [live, setLive] = useState(true);
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  const now = useNow();
  const load = async () => {
    if (!event) return;
    try {
      const [waiters, history] = await Promise.all([
        call(session.token, "GET", `/v2/waiters/${seg(event)}`),
        call(session.token, "GET", `/v2/events/${seg(event)}/history?count=100`),
      ]);
      setData({ event, waiters, history, at: Date.now() });
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => setData(null), [event]);
  usePoll(load, 2000, Boolean(event) && live, [event]);
  const shown = data && data.event === event ? data : null;
  return (
    <>
      <IdForm label="Event id" id="event-id" value={event} button="Look up" onSubmit={(v) => (window.location.hash = `#/events/${seg(v)}`)} />
      {event && (
        <div class="toolbar">
          <LiveToggle live={live} setLive={setLive} id="events-live" />
          <button type="button" class="secondary" onClick={load}>
            Refresh now
          </button>
          {shown && <span class="muted">Updated {clockMs(shown.at)}</span>}
        </div>
      )}
      <Notice error>{error}</Notice>
      {shown && (
        <>
          <section aria-labelledby="waiters-h">
            <h3 id="waiters-h">
              Waiters of <code>{shown.event}</code> <span class="count">({shown.waiters.length})</span>
            </h3>
            <Table
              caption={`Waiters of ${shown.event}`}
              empty="Nobody waits for this event now."
              rows={shown.waiters.map((w, i) => ({ ...w, key: `${w.url}-${w.deadline}-${i}` }))}
              columns={[
                { label: "Delivered to", cell: (w) => <code class="wrap">{w.url}</code> },
                { label: "Deadline", cell: (w) => clock(w.deadline * 1000) },
                {
                  label: "Time left",
                  cell: (w) => {
                    const left = w.deadline * 1000 - now;
                    return <span class={left < 60000 ? "left soon" : "left"}>{left > 0 ? span(left) : "due"}</span>;
                  },
                },
                { label: "On timeout", cell: (w) => <code class="wrap">{w.timeoutUrl}</code> },
              ]}
            />
          </section>
          <section aria-labelledby="history-h">
            <h3 id="history-h">
              History <span class="count">(newest first, kept {span(shown.history.retentionSecs * 1000)})</span>
            </h3>
            {shown.history.entries.length === 0 ? (
              <p class="muted">No history for this event.</p>
            ) : (
              <ol class="timeline">
                {shown.history.entries.map((h, i) => (
                  <li key={`${h.at}-${i}`} class={`outcome-${h.outcome}`}>
                    <div class="when">
                      <time dateTime={new Date(h.at).toISOString()}>{clockMs(h.at)}</time>
                      <span class="muted"> {relative(h.at, now)}</span>
                    </div>
                    <div class="what">
                      <span class="badge">{OUTCOME_TEXT[h.outcome] || h.outcome}</span>
                      {h.attempt !== undefined && <span> attempt {h.attempt}</span>}
                      {h.status !== undefined && <span> · HTTP {h.status || "no response"}</span>}
                    </div>
                    <dl class="facts">
                      {h.url && <Fact name="URL" value={h.url} />}
                      {h.waiterId && <Fact name="Waiter" value={h.waiterId} />}
                      {h.workflowRunId && <Fact name="Run" value={h.workflowRunId} />}
                      {h.messageId && <Fact name="Message" value={h.messageId} />}
                      {h.deadline !== undefined && <Fact name="Deadline" value={clock(h.deadline * 1000)} />}
                      {h.error && <Fact name="Error" value={h.error} />}
                    </dl>
                  </li>
                ))}
              </ol>
            )}
          </section>
        </>
      )}
    </>
  );
}

function Fact({ name, value }) {
  return (
    <div>
      <dt>{name}</dt>
      <dd>
        <code class="wrap">{value}</code>
      </dd>
    </div>
  );
}

export function Runs({ session, arg }) {
  const run = arg && ID.test(arg) ? arg : "";
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  const now = useNow();
  const load = async () => {
    if (!run) return;
    try {
      setData(await call(session.token, "GET", `/v2/workflows/runs/${seg(run)}/saved`));
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => {
    setData(null);
    load();
  }, [run]);
  const shown = data && data.workflowRunId === run ? data : null;
  return (
    <>
      <p class="muted">
        Lookback notifications (<code>POST /v2/notify/&lt;run&gt;/&lt;event&gt;</code> while none of the run's waiters waits) are kept for the run's next wait on the event.
      </p>
      <IdForm label="Run id" id="run-id" value={run} button="Show" onSubmit={(v) => (window.location.hash = `#/runs/${seg(v)}`)} />
      <Notice error>{error}</Notice>
      {shown && (
        <section aria-labelledby="saved-h">
          <div class="toolbar">
            <h3 id="saved-h">
              Saved for <code>{shown.workflowRunId}</code>
            </h3>
            <button type="button" class="secondary" onClick={load}>
              Refresh
            </button>
          </div>
          {shown.truncated && <Notice>Only part is shown: the answer is bounded in notifications and bytes.</Notice>}
          {shown.events.length === 0 ? (
            <p class="muted">Nothing is saved for this run.</p>
          ) : (
            shown.events.map((ev) => (
              <article class="card" key={ev.eventId}>
                <h4>
                  Event <code>{ev.eventId}</code> <span class="count">({ev.count} saved)</span>
                </h4>
                <Table
                  caption={`Saved notifications of ${ev.eventId}`}
                  empty="None."
                  rows={ev.items.map((it) => ({ ...it, key: it.messageId }))}
                  columns={[
                    { label: "Message", cell: (it) => <code class="wrap">{it.messageId}</code> },
                    { label: "Saved", cell: (it) => `${clock(it.savedAt)} (${relative(it.savedAt, now)})` },
                    { label: "Expires", cell: (it) => relative(it.expiresAt, now) },
                    { label: "Body", cell: (it) => <Body item={it} /> },
                  ]}
                />
              </article>
            ))
          )}
        </section>
      )}
    </>
  );
}

function Body({ item }) {
  const text = bodyText(item.body);
  return (
    <div>
      <span class="muted">
        {item.contentType || "no content type"}, {bytes(item.bytes)}
      </span>
      {text === null ? <p class="muted">(body not included: over the answer's byte bound)</p> : text && <pre>{text}</pre>}
    </div>
  );
}

export function DeadLetters({ session }) {
  const [filter, setFilter] = useState("");
  const [applied, setApplied] = useState("");
  const [page, setPage] = useState({ messages: [], cursor: null, loaded: false });
  const [error, setError] = useState("");
  const [done, setDone] = useState("");
  const [confirm, setConfirm] = useState(null);
  const [busy, setBusy] = useState(null);
  const query = (cursor) => {
    const q = new URLSearchParams({ count: "50" });
    if (applied) q.set("eventId", applied);
    if (cursor) q.set("cursor", cursor);
    return `/v2/dlq?${q}`;
  };
  const load = async (more) => {
    try {
      const next = await call(session.token, "GET", query(more ? page.cursor : null));
      setPage((p) => ({ messages: more ? [...p.messages, ...next.messages] : next.messages, cursor: next.cursor, loaded: true }));
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => {
    load(false);
  }, [applied]);
  const act = async (letter, action) => {
    setBusy(letter.dlqId);
    setDone("");
    try {
      if (action === "retry") {
        const r = await call(session.token, "POST", `/v2/dlq/retry/${seg(letter.dlqId)}`);
        setDone(`Retried ${letter.dlqId}: sent again as ${r.messageId}.`);
      } else {
        await call(session.token, "DELETE", `/v2/dlq/${seg(letter.dlqId)}`);
        setDone(`Deleted ${letter.dlqId}.`);
      }
      setPage((p) => ({ ...p, messages: p.messages.filter((m) => m.dlqId !== letter.dlqId) }));
      setError("");
      document.getElementById("dlq-h")?.focus();
    } catch (e) {
      setError(e.message);
    } finally {
      setBusy(null);
      setConfirm(null);
    }
  };
  return (
    <>
      <form
        class="search"
        onSubmit={(e) => {
          e.preventDefault();
          const v = filter.trim();
          if (v && !ID.test(v)) {
            setError("Ids are 1–256 characters of letters, digits and . _ : -");
            return;
          }
          setApplied(v);
        }}
      >
        <label for="dlq-event">Only the event (optional)</label>
        <div class="row">
          <input id="dlq-event" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} autocomplete="off" />
          <button type="submit">Filter</button>
          <button type="button" class="secondary" onClick={() => load(false)}>
            Refresh
          </button>
        </div>
      </form>
      <Notice error>{error}</Notice>
      <Notice>{done}</Notice>
      <h3 id="dlq-h" tabIndex={-1}>
        Dead letters <span class="count">({page.messages.length}{page.cursor ? "+" : ""})</span>
      </h3>
      {page.loaded && page.messages.length === 0 && <p class="muted">No dead letters{applied ? ` for ${applied}` : ""}.</p>}
      <ul class="letters">
        {page.messages.map((m) => (
          <li class="card" key={m.dlqId}>
            <h4>
              <code>{m.eventId}</code> <span class="badge">{m.outcome === "timeout" ? "timeout" : "event"}</span>
            </h4>
            <dl class="facts">
              <Fact name="URL" value={m.url} />
              <Fact name="Attempts" value={String(m.attempts)} />
              <Fact name="Last answer" value={m.lastStatus ? `HTTP ${m.lastStatus}` : "no response"} />
              {m.lastError && <Fact name="Last error" value={m.lastError} />}
              <Fact name="Dead-lettered" value={clock(m.deadLetteredAt)} />
              <Fact name="Message" value={m.messageId} />
              <Fact name="Dead letter id" value={m.dlqId} />
            </dl>
            <div class="actions">
              <button type="button" disabled={busy === m.dlqId} onClick={() => act(m, "retry")} aria-label={`Retry dead letter ${m.dlqId} of ${m.eventId}`}>
                Retry
              </button>
              {confirm === m.dlqId ? (
                <>
                  <button type="button" class="danger" onClick={() => act(m, "delete")} aria-label={`Confirm delete of dead letter ${m.dlqId}`}>
                    Confirm delete
                  </button>
                  <button type="button" class="secondary" onClick={() => setConfirm(null)}>
                    Keep
                  </button>
                </>
              ) : (
                <button type="button" class="secondary" onClick={() => setConfirm(m.dlqId)} aria-label={`Delete dead letter ${m.dlqId} of ${m.eventId}`}>
                  Delete
                </button>
              )}
            </div>
          </li>
        ))}
      </ul>
      {page.cursor && (
        <button type="button" class="secondary" onClick={() => load(true)}>
          Load more
        </button>
      )}
    </>
  );
}

const LIMIT_TEXT = {
  wait_per_sec: "Wait requests per second",
  wait_burst: "Wait burst",
  notify_per_sec: "Notify requests per second",
  notify_burst: "Notify burst",
  read_per_sec: "Other requests per second",
  read_burst: "Other requests burst",
  active_waiters: "Active waiters",
  waiters_per_event: "Waiters per event",
  saved_per_run_event: "Saved notifications per run and event",
  notify_body_bytes: "Largest notify body (bytes)",
  stored_bytes: "Stored bytes",
  max_timeout: "Longest wait timeout",
};

export function LimitsView({ limits, overrides, usage }) {
  const now = useNow();
  const max = usage.maxActiveWaiters;
  return (
    <>
      <section aria-labelledby="usage-h">
        <h3 id="usage-h">Usage now</h3>
        <p>
          <label for="usage-meter">
            Active waiters: <strong>{usage.activeWaiters}</strong> {max ? `of ${max}` : "(no limit)"}
          </label>
          {max > 0 && <meter id="usage-meter" min="0" max={max} value={usage.activeWaiters} high={max * 0.8} />}
        </p>
        <p>
          <label for="stored-meter">
            Stored bytes: <strong>{usage.storedBytes}</strong>{" "}
            {usage.maxStoredBytes ? `of ${usage.maxStoredBytes}` : "(no limit)"}
          </label>
          {usage.maxStoredBytes > 0 && (
            <meter id="stored-meter" min="0" max={usage.maxStoredBytes} value={usage.storedBytes} high={usage.maxStoredBytes * 0.8} />
          )}
        </p>
        <Table
          caption="Rate limits now"
          empty="No rates."
          rows={["wait", "notify", "read"].map((c) => ({ key: c, cls: c, ...usage.rates[c] }))}
          columns={[
            { label: "Class", cell: (r) => r.cls },
            { label: "Per second", cell: (r) => (r.perSec ? r.perSec : "unlimited") },
            { label: "Burst", cell: (r) => r.burst ?? "—" },
            { label: "Allowed at once now", cell: (r) => r.remaining ?? "—" },
            { label: "Full again", cell: (r) => (r.reset ? relative(r.reset * 1000, now) : "—") },
          ]}
        />
      </section>
      <section aria-labelledby="limits-h">
        <h3 id="limits-h">Effective limits</h3>
        <Table
          caption="Effective limits"
          empty="No limits."
          rows={Object.keys(limits).map((k) => ({ key: k }))}
          columns={[
            { label: "Limit", cell: (r) => LIMIT_TEXT[r.key] || r.key },
            { label: "Key", cell: (r) => <code>{r.key}</code> },
            { label: "Value", cell: (r) => (limits[r.key] === 0 && r.key !== "saved_per_run_event" ? "0 (unlimited)" : String(limits[r.key])) },
            { label: "Set for this tenant", cell: (r) => (overrides && r.key in overrides ? "yes" : "default") },
          ]}
        />
      </section>
    </>
  );
}

export function Limits({ session }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  const load = async () => {
    try {
      setData(await call(session.token, "GET", "/v2/limits"));
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  usePoll(load, 5000, true, []);
  return (
    <>
      <Notice error>{error}</Notice>
      {data && <LimitsView limits={data.limits} overrides={data.overrides} usage={data.usage} />}
    </>
  );
}
