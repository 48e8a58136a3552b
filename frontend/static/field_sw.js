// The field app's service worker: the app shell is cached so the app opens with no
// network (the page, its scripts, styles and the map library). The page and scripts are
// fetched from the network first (a new version takes effect at once) and from the cache
// when there is none; the API is never cached (the outbox in field_queue.js keeps what
// the user does offline, the feed resumes from its last seq).

const CACHE = "gridhub-field-v1";
const SHELL = [
  "/field", "/static/field.js", "/static/field_queue.js", "/static/i18n.js",
  "/static/field.css", "/static/field_icon.svg", "/vendor/leaflet/leaflet.js",
  "/vendor/leaflet/leaflet.css", "/field/manifest.webmanifest",
];

self.addEventListener("install", (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (ev) => {
  ev.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "GET" || url.origin !== location.origin) return;
  if (url.pathname.startsWith("/api/") || url.pathname.startsWith("/ws/")) return;
  const key = url.pathname === "/field" ? "/field" : ev.request;
  ev.respondWith(fetch(ev.request).then((res) => {
    if (res.ok) {
      const copy = res.clone();
      caches.open(CACHE).then((c) => c.put(key, copy));
    }
    return res;
  }).catch(() => caches.match(key, { ignoreSearch: url.pathname === "/field" })
    .then((hit) => hit || caches.match(ev.request))));
});
