// The labelling page of `rlhf-rank --web`. Every text from the file (prompts, answers) is put in
// the page with textContent, never as HTML: an answer holding markup shows its characters.
// Every request carries the labeller's token in a header (the server's CSRF defence); the token
// is kept in localStorage so that a reload continues where the labeller was.
"use strict";

const FLAG_KEYS = {fails_instruction: "i", hallucination: "h", inappropriate: "a", harmful: "x",
                   sexual: "c", violent: "v", denigrates: "p", opinion: "o", moral_judgment: "m"};
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("rlhf-rank-token");
let flags = {};         // flag name -> description, from the server
let item = null;        // the prompt on screen: {key, prompt, answers, order}
let order = [];         // answer indices, best first
let tied = new Set();   // answer indices tied with the answer above them
let ratings = {};       // answer index -> 1..7
let ticked = {};        // answer index -> Set of flag names
let selected = 0;       // position in `order` that keys act on
let restore = null;     // the label an undo took back, shown again as it was

async function api(method, path, body) {
  const headers = {"Authorization": "Bearer " + (token || "")};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/login") { signOut(); }
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

function say(text) { $("status").textContent = text || ""; }

function show(section) {
  for (const id of ["sign-in", "label", "done", "summary"]) $(id).hidden = id !== section;
  const signedIn = section !== "sign-in";
  for (const id of ["show-summary", "sign-out"]) $(id).hidden = !signedIn;
  $("show-label").hidden = !signedIn || section === "label" || section === "done";
}

function signOut() {
  localStorage.removeItem("rlhf-rank-token");
  localStorage.removeItem("rlhf-rank-name");
  token = null;
  $("who").textContent = "";
  show("sign-in");
}

async function signIn(event) {
  event.preventDefault();
  try {
    const me = await api("POST", "/api/login", {name: $("name").value.trim(), token: $("token").value.trim()});
    token = $("token").value.trim();
    localStorage.setItem("rlhf-rank-token", token);
    localStorage.setItem("rlhf-rank-name", me.name);
    say("");
    await load();
  } catch (e) { say(e.message); }
}

function setProgress(p) {
  $("progress").max = Math.max(p.total, 1);
  $("progress").value = p.done;
  $("progress-text").textContent = `${p.done} / ${p.total} ranked (you: ${p.mine}, skipped ${p.skipped})`;
}

async function load() {
  const next = await api("GET", "/api/next");
  flags = next.flags;
  $("who").textContent = next.labeller;
  setProgress(next.progress);
  item = next.item;
  if (!item) { show("done"); return; }
  order = item.order.slice();
  tied = new Set(); ratings = {}; ticked = {};
  item.answers.forEach((_, i) => { ticked[i] = new Set(); });
  if (restore && restore.key === item.key && restore.label) {
    const r = restore.label.ranks;
    order = item.answers.map((_, i) => i).sort((a, b) => r[a] - r[b] || item.order.indexOf(a) - item.order.indexOf(b));
    order.forEach((a, pos) => { if (pos > 0 && r[a] === r[order[pos - 1]]) tied.add(a); });
    restore.label.ratings.forEach((v, i) => { ratings[i] = v; });
    restore.label.flags.forEach((names, i) => { ticked[i] = new Set(names); });
  }
  restore = null;
  selected = 0;
  $("prompt").textContent = item.prompt;
  show("label");
  render();
}

function ranks() {  // per answer index: 0 = best, equal = tie
  const out = new Array(order.length);
  let rank = -1;
  order.forEach((a, pos) => { if (pos === 0 || !tied.has(a)) rank += 1; out[a] = rank; });
  return out;
}

function render() {
  const list = $("answers");
  list.replaceChildren();
  const r = ranks();
  order.forEach((a, pos) => {
    const card = document.createElement("li");
    card.className = "card" + (pos === selected ? " selected" : "") + (tied.has(a) && pos > 0 ? " tied" : "");
    card.draggable = true;
    card.dataset.answer = String(a);
    card.dataset.rank = String(r[a]);
    card.addEventListener("click", () => { selected = pos; render(); });
    card.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(pos)); card.classList.add("dragging"); });
    card.addEventListener("dragend", () => card.classList.remove("dragging"));
    card.addEventListener("dragover", (e) => e.preventDefault());
    card.addEventListener("drop", (e) => { e.preventDefault(); move(Number(e.dataTransfer.getData("text/plain")), pos); });

    const head = document.createElement("div");
    head.className = "card-head";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${r[a] + 1}` + (tied.has(a) && pos > 0 ? " (tie)" : "");
    const letter = document.createElement("span");
    letter.className = "letter";
    letter.textContent = String.fromCharCode(65 + a);
    head.append(rank, letter);
    if (pos > 0) {
      const tie = button("= tie with above (t)", () => { selected = pos; toggleTie(); });
      tie.className = "tie" + (tied.has(a) ? " on" : "");
      head.append(tie);
    }
    const rate = document.createElement("span");
    rate.className = "ratings";
    rate.append("quality: ");
    for (let v = 1; v <= 7; v++) {
      const b = button(String(v), () => { ratings[a] = v; render(); });
      if (ratings[a] === v) b.classList.add("on");
      b.dataset.rating = String(v);
      rate.append(b);
    }
    head.append(rate);

    const text = document.createElement("div");
    text.className = "text answer";
    text.textContent = item.answers[a];

    const boxes = document.createElement("div");
    boxes.className = "flags";
    for (const [name, description] of Object.entries(flags)) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.flag = name;
      box.checked = ticked[a].has(name);
      box.addEventListener("change", () => { box.checked ? ticked[a].add(name) : ticked[a].delete(name); });
      label.append(box, ` ${description} (${FLAG_KEYS[name] || ""})`);
      boxes.append(label);
    }
    card.append(head, text, boxes);
    list.append(card);
  });
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
  return b;
}

function move(from, to) {
  if (to < 0 || to >= order.length || from === to) return;
  const [a] = order.splice(from, 1);
  order.splice(to, 0, a);
  tied.delete(order[0]);  // the best answer has nothing above it to tie with
  selected = to;
  render();
}

function toggleTie() {
  if (selected === 0) return;
  const a = order[selected];
  tied.has(a) ? tied.delete(a) : tied.add(a);
  render();
}

async function submit() {
  if (!item) return;
  const missing = item.answers.map((_, i) => i).filter((i) => !ratings[i]);
  if (missing.length) { say(`Rate every answer 1-7 first (${missing.map((i) => String.fromCharCode(65 + i)).join(", ")}).`); return; }
  const r = ranks();
  if (new Set(r).size < 2) { say("Every answer is tied: nothing to learn from that. Skip (s) instead."); return; }
  try {
    await api("POST", "/api/labels", {key: item.key, ranks: r, ratings: item.answers.map((_, i) => ratings[i]),
                                      flags: item.answers.map((_, i) => [...ticked[i]].sort())});
    say("");
    await load();
  } catch (e) { say(e.message); }
}

async function skip() {
  if (!item) return;
  try { await api("POST", "/api/skip", {key: item.key}); say(""); await load(); } catch (e) { say(e.message); }
}

async function undo() {
  try { restore = await api("POST", "/api/undo"); say(`Undone: your last ${restore.undone}.`); await load(); }
  catch (e) { say(e.message); }
}

async function summary() {
  try {
    const s = await api("GET", "/api/summary");
    $("summary-counts").textContent = `${s.labelled} of ${s.prompts} prompts labelled, ${s.labels} labels; ` +
      `${s.prompts_for_several} prompts go to several labellers.`;
    const rows = $("summary-rows");
    rows.replaceChildren();
    for (const [name, p] of Object.entries(s.labellers)) {
      const tr = document.createElement("tr");
      for (const v of [name, p.labels, p.skips, p.median_seconds === null ? "-" : p.median_seconds.toFixed(1)]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      rows.append(tr);
    }
    const g = s.agreement;
    $("summary-agreement").textContent = g.prompts === 0 ? "Agreement: no prompt has two labels yet." :
      `Agreement over ${g.prompts} prompts labelled by several people (${g.answer_pairs} answer pairs): ` +
      `${(100 * g.pairwise).toFixed(1)}% of pairs ordered alike; Kendall's tau ` +
      (g.kendall_tau === null ? "-" : g.kendall_tau.toFixed(3)) + ".";
    show("summary");
  } catch (e) { say(e.message); }
}

function keys(event) {
  if (event.target.tagName === "INPUT" && event.target.type !== "checkbox") return;
  if ($("help").open) return;
  const k = event.key;
  if (k === "?") { $("help").showModal(); event.preventDefault(); return; }
  if (k === "g" && token) { $("summary").hidden ? summary() : load().catch((e) => say(e.message)); event.preventDefault(); return; }
  if ($("label").hidden) { if ((k === "u" || (k === "z" && event.ctrlKey)) && !$("done").hidden) undo(); return; }
  const down = k === "ArrowDown" || k === "j", up = k === "ArrowUp" || k === "k";
  if ((event.shiftKey && k === "ArrowUp") || k === "K") move(selected, selected - 1);
  else if ((event.shiftKey && k === "ArrowDown") || k === "J") move(selected, selected + 1);
  else if (down) { selected = Math.min(selected + 1, order.length - 1); render(); }
  else if (up) { selected = Math.max(selected - 1, 0); render(); }
  else if (k === "t" || k === "=") toggleTie();
  else if (k >= "1" && k <= "7") { ratings[order[selected]] = Number(k); render(); }
  else if (k === "Enter") submit();
  else if (k === "s") skip();
  else if (k === "u" || (k === "z" && event.ctrlKey)) undo();
  else {
    const flag = Object.keys(FLAG_KEYS).find((f) => FLAG_KEYS[f] === k);
    if (!flag) return;
    const set = ticked[order[selected]];
    set.has(flag) ? set.delete(flag) : set.add(flag);
    render();
  }
  event.preventDefault();
}

function helpTable() {
  const rows = [["j / k, arrows", "select the next / previous answer"],
                ["J / K, Shift+arrows", "move the selected answer down / up the ranking"],
                ["t or =", "tie the selected answer with the one above"],
                ["1 - 7", "rate the selected answer's quality"],
                ...Object.entries(FLAG_KEYS).map(([f, key]) => [key, "flag: " + f.replace("_", " ")]),
                ["Enter", "submit"], ["s", "skip for now"], ["u, Ctrl+z", "undo your last label or skip"],
                ["g", "the summary, and back"],
                ["?", "these keys"]];
  for (const [key, what] of rows) {
    const tr = document.createElement("tr");
    const a = document.createElement("td"), b = document.createElement("td");
    a.textContent = key; b.textContent = what;
    tr.append(a, b);
    $("keys").append(tr);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  helpTable();
  $("sign-in-form").addEventListener("submit", signIn);
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("show-summary").addEventListener("click", summary);
  $("show-label").addEventListener("click", () => load().catch((e) => say(e.message)));
  $("show-help").addEventListener("click", () => $("help").showModal());
  $("sign-out").addEventListener("click", signOut);
  document.addEventListener("keydown", keys);
  if (token) load().catch((e) => { say(e.message); show("sign-in"); });
  else show("sign-in");
});
