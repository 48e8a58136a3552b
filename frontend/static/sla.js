// SLA countdowns. An incident carries `sla`: {stage: {deadline, warn_at, met_at, state}}
// for the stages register, dispatch, accept, arrive, resolve (UNIX seconds; state ok |
// warning | breached | met | stopped). The countdown shown is that of the CURRENT stage,
// the first one not yet met: remaining = deadline - now, green while more than the warning
// share is left, amber from warn_at, red once breached (or past the deadline).

import { fmtClockSpan, label, t } from "./i18n.js";

export const STAGES = ["register", "dispatch", "accept", "arrive", "resolve"];

export function currentStage(inc) {
  const sla = inc && inc.sla;
  if (!sla || typeof sla !== "object") return null;
  for (const stage of STAGES) {
    const info = sla[stage];
    if (info && info.met_at == null) return { stage, info };
  }
  return null;
}

// {stage, level: green|amber|red|paused|none, text, remaining, title} at `now` (UNIX s).
export function slaView(inc, now) {
  const cur = currentStage(inc);
  if (!cur) return { stage: "", level: "none", text: "—", remaining: null, title: t("sla.none") };
  const { stage, info } = cur;
  const stageName = label("sla.stage", stage);
  if (typeof info.deadline !== "number") {
    return { stage, level: "paused", text: t("sla.paused"), remaining: null,
      title: t("sla.paused_title", { stage: stageName }) };
  }
  const remaining = info.deadline - now;
  let level = "green";
  if (info.state === "breached" || remaining < 0) level = "red";
  else if (info.state === "warning" || (typeof info.warn_at === "number" && now >= info.warn_at)) {
    level = "amber";
  }
  const text = remaining >= 0 ? fmtClockSpan(remaining) : `-${fmtClockSpan(-remaining)}`;
  const title = remaining >= 0
    ? t("sla.left_title", { stage: stageName, t: fmtClockSpan(remaining) })
    : t("sla.over_title", { stage: stageName, t: fmtClockSpan(-remaining) });
  return { stage, level, text, remaining, title };
}
