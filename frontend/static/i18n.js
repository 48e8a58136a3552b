// The page's UI strings and formats. The server renders every string the scripts need,
// already translated, into one JSON block (<script id="i18n">, built in
// templates/_i18n_js.html with gettext), so the scripts hold no words of their own.
//
// Keys are dotted: "state.registered", "action.accept", "sla.stage.dispatch", ...
// Placeholders in a string are {name}, filled by t(key, {name: value}).

const node = document.getElementById("i18n");
export const STRINGS = node ? JSON.parse(node.textContent || "{}") : {};
// BCP 47 tag of the page ("zh-CN" or "en"), for Intl formats.
export const LANG = document.documentElement.lang || "zh-CN";

export function t(key, vars) {
  let s = Object.prototype.hasOwnProperty.call(STRINGS, key) ? STRINGS[key] : key;
  if (vars) {
    s = s.replace(/\{(\w+)\}/g, (m, name) => (vars[name] === undefined ? m : String(vars[name])));
  }
  return s;
}

// A dispatch reason ({code, params}, dispatch/reasons.py) in the page's language; an
// operator's reason code among the params reads as its label. ``fallback`` (the English
// text stored with it) when the reason is missing or its code is new to this page.
export function reasonText(why, fallback = "") {
  if (!why || !why.code) return fallback;
  const key = `reason.${why.code}`;
  if (!Object.prototype.hasOwnProperty.call(STRINGS, key)) return fallback;
  const params = { ...(why.params || {}) };
  if (typeof params.code === "string") params.code = label("override.reason", params.code);
  return t(key, params);
}

// The label of a code in a group ("state", "priority", ...), or the code itself when the
// catalog has none (a new code from the server still shows something readable).
export function label(group, code) {
  const key = `${group}.${code}`;
  if (Object.prototype.hasOwnProperty.call(STRINGS, key)) return STRINGS[key];
  return code === undefined || code === null ? "" : String(code);
}

export const has = (key) => Object.prototype.hasOwnProperty.call(STRINGS, key);

// ------------------------------------------------------------------- formats
export const pad2 = (n) => (n < 10 ? "0" : "") + n;

export function fmtClock(tsS) {
  const d = new Date(tsS * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

// Time of day for today, with the date otherwise.
export function fmtTime(tsS, nowS = Date.now() / 1000) {
  if (typeof tsS !== "number") return "—";
  const d = new Date(tsS * 1000);
  const sameDay = d.toDateString() === new Date(nowS * 1000).toDateString();
  const hms = fmtClock(tsS);
  return sameDay ? hms : `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hms}`;
}

export function fmtDateTime(tsS) {
  if (typeof tsS !== "number") return "—";
  const d = new Date(tsS * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${fmtClock(tsS)}`;
}

const LONG_DATE = new Intl.DateTimeFormat(LANG, {
  year: "numeric", month: "long", day: "numeric", weekday: "long" });
export const fmtLongDate = (tsS) => LONG_DATE.format(new Date(tsS * 1000));

// A countdown or elapsed time: "MM:SS", "H:MM:SS", or "Nd HH:MM:SS" beyond two days.
export function fmtClockSpan(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h === 0) return `${pad2(m)}:${pad2(sec)}`;
  if (h < 48) return `${h}:${pad2(m)}:${pad2(sec)}`;
  return `${Math.floor(h / 24)}${t("unit.day")} ${pad2(h % 24)}:${pad2(m)}:${pad2(sec)}`;
}

// A length of time in words: "1 h 05 min", "3 min 20 s", "45 s".
export function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h > 0) return t("dur.hm", { h, m: pad2(m) });
  if (m > 0) return t("dur.ms", { m, s: pad2(sec) });
  return t("dur.s", { s: sec });
}

export function fmtPercent(x, digits = 1) {
  return typeof x === "number" && isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "—";
}

export function fmtDistance(m) {
  if (typeof m !== "number" || !isFinite(m)) return "—";
  return m >= 1000 ? `${(m / 1000).toFixed(1)} km` : `${Math.round(m)} m`;
}

export function fmtNumber(x, digits = 0) {
  if (typeof x !== "number" || !isFinite(x)) return "—";
  return x.toLocaleString(LANG, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
