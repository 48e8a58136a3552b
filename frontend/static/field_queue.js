// The phone's outbox: every action and report is saved here first (IndexedDB, photos as
// Blobs) with an idempotency key made when the user acted, then sent in order when the
// network allows. The hub applies a key once (hub/field_idempotency.py): a request sent
// twice (answer lost, app killed mid-send) gets the first answer again. A refusal (4xx)
// stays in the list, marked, until the user discards it; nothing is dropped silently.

const DB_NAME = "gridhub-field";
const STORE = "outbox";

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "key" });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const out = fn(t.objectStore(STORE));
    t.oncomplete = () => resolve(out && "result" in out ? out.result : undefined);
    t.onerror = () => reject(t.error);
  });
}

export function newKey() {
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const put = (item) => tx("readwrite", (s) => s.put(item));
export const remove = (key) => tx("readwrite", (s) => s.delete(key));
export async function all() {
  const items = (await tx("readonly", (s) => s.getAll())) || [];
  return items.sort((a, b) => a.created - b.created);
}

// Queue one request: {path, body, photos: [File|Blob], label}.
export async function enqueue(req) {
  const item = { key: newKey(), created: Date.now(), state: "waiting", error: "", ...req };
  await put(item);
  return item;
}

// Send what is waiting, oldest first; stops at the first network failure (the rest keep
// their order). `send(item)` resolves to the answer, or throws {status, code, message}.
let flushing = null;
export function flush(send, onChange) {
  if (!flushing) {
    flushing = (async () => {
      try {
        for (const item of await all()) {
          if (item.state !== "waiting") continue;
          try {
            const answer = await send(item);
            await remove(item.key);
            onChange({ item, answer });
          } catch (err) {
            if (!err.status) break;  // no network: try again later, in order
            item.state = "failed";
            item.error = `${err.code || err.status}: ${err.message || ""}`;
            await put(item);
            onChange({ item, error: err });
          }
        }
      } finally {
        flushing = null;
      }
    })();
  }
  return flushing;
}
