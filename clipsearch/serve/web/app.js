// clipsearch's page: the search form, the result grid (paged on scroll) and the photo view.
// All text from the server is set with textContent: file names are untrusted.
"use strict";

const PAGE = 40;
const FIELDS = ["q", "not", "after", "before", "camera", "tag", "min_rating", "near", "within", "like", "duplicates"];
const state = { params: null, offset: 0, more: false, loading: false, byId: new Map(), generation: 0 };
const $ = (id) => document.getElementById(id);

function paramsFromForm() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("search"))) {
    if (String(value).trim()) params.set(name, String(value).trim());
  }
  return params;
}

function fillForm(params) {
  for (const input of $("search").elements) {
    if (input.name) input.value = params.get(input.name) || "";
  }
  const filtered = ["not", "after", "before", "camera", "tag", "min_rating", "near", "within"].some((n) => params.get(n));
  $("filters").open = filtered;
}

function searchParams(location) {
  const params = new URLSearchParams();
  const given = new URLSearchParams(location.search);
  for (const name of FIELDS) if (given.get(name)) params.set(name, given.get(name));
  return params;
}

function start(params) {
  state.params = params;
  state.offset = 0;
  state.more = false;
  state.generation += 1;
  state.byId.clear();
  $("results").replaceChildren();
  $("groups").replaceChildren();
  if ([...params.keys()].length === 0) { $("status").textContent = ""; return; }
  if (params.get("duplicates")) { $("status").textContent = "Looking for duplicates\u2026"; loadGroups(); return; }
  $("status").textContent = params.get("like") ? "Finding similar photos\u2026" : "Searching\u2026";
  loadPage();
}

async function loadPage() {
  if (state.loading || !state.params) return;
  state.loading = true;
  const generation = state.generation;
  const params = new URLSearchParams(state.params);
  params.set("offset", String(state.offset));
  params.set("top", String(PAGE));
  try {
    const response = await fetch("/api/search?" + params, { credentials: "same-origin" });
    const body = await response.json();
    if (generation !== state.generation) return;
    if (!response.ok) { $("status").textContent = body.error || "The search failed."; state.more = false; return; }
    // A note about the whole answer (e.g. an untrained model: rankings are meaningless) stays
    // in sight above the results, not only when nothing was found.
    const note = (body.notes || []).find((text) => /untrained|random weights/.test(text));
    $("note").textContent = note || "";
    $("note").hidden = !note;
    for (const result of body.results) addResult(result);
    state.offset += body.results.length;
    state.more = body.more;
    const count = state.offset;
    $("status").textContent = count ? `${count}${body.more ? "+" : ""} photo${count === 1 ? "" : "s"}`
                                    : (body.notes[0] || "Nothing found.");
  } catch (error) {
    if (generation === state.generation) $("status").textContent = "The server did not answer: is clipsearch serve running?";
  } finally {
    state.loading = false;
  }
  if (generation === state.generation && state.more && nearBottom()) loadPage();
}

// The Duplicates view: groups side by side, best copy first, each member with its evidence.
async function loadGroups() {
  const generation = state.generation;
  try {
    const response = await fetch("/api/duplicates?top=50&offset=" + $("groups").children.length,
                                 { credentials: "same-origin" });
    const body = await response.json();
    if (generation !== state.generation) return;
    if (!response.ok) { $("status").textContent = body.error || "Finding duplicates failed."; return; }
    for (const group of body.groups) addGroup(group);
    const shown = $("groups").children.length;
    $("status").textContent = body.total ? `${body.total} group${body.total === 1 ? "" : "s"} of the same picture`
                                         : "No duplicates found.";
    $("note").textContent = (body.notes || []).join(" ");
    $("note").hidden = !(body.notes || []).length;
    if (body.more && shown < body.total) loadGroups();
  } catch (error) {
    if (generation === state.generation) $("status").textContent = "The server did not answer: is clipsearch serve running?";
  }
}

function evidence(member) {
  if (member.best) return "best copy";
  if (member.identical_bytes) return "identical bytes";
  if (member.print_difference !== undefined) {
    const turned = member.turned && member.turned !== "no" ? `, turned ${member.turned}` : "";
    return `${Math.round(member.print_difference * 100)}% different${turned}`;
  }
  return `cosine ${member.cosine.toFixed(3)}, ${member.seconds_apart} s apart`;
}

function addGroup(group) {
  const section = document.createElement("section");
  section.className = "group";
  const title = document.createElement("h2");
  title.textContent = `${group.kind} \u00b7 ${group.members.length} photos`;
  const row = document.createElement("div");
  row.className = "members";
  for (const member of group.members) {
    state.byId.set(String(member.id), { ...member, name: member.path.split("/").pop() });
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = "#view=" + member.id;
    const image = document.createElement("img");
    image.src = "/thumb/" + member.id;
    image.alt = member.path.split("/").pop();
    image.loading = "lazy";
    link.append(image);
    const caption = document.createElement("figcaption");
    caption.textContent = `${image.alt} \u00b7 ${member.width || "?"}\u00d7${member.height || "?"} \u00b7 ${evidence(member)}`;
    figure.append(link, caption);
    if (member.best) figure.className = "best";
    row.append(figure);
  }
  section.append(title, row);
  $("groups").append(section);
}

function nearBottom() {
  return $("more").getBoundingClientRect().top < window.innerHeight + 600;
}

function addResult(result) {
  state.byId.set(String(result.id), result);
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = "#view=" + result.id;
  link.dataset.id = String(result.id);
  link.title = result.path;
  const image = document.createElement("img");
  image.src = "/thumb/" + result.id;
  image.loading = "lazy";
  image.decoding = "async";
  image.alt = result.name;
  // A photo whose disk is gone (or that changed since it was indexed) gets a tile saying so,
  // not a broken image.
  image.addEventListener("error", () => {
    const missing = document.createElement("span");
    missing.className = "missing";
    missing.textContent = result.name + ": not available (disk unplugged, moved or changed?)";
    image.replaceWith(missing);
    link.classList.add("unavailable");
  }, { once: true });
  link.append(image);
  if (result.score !== null) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.score.toFixed(3);
    link.append(score);
  }
  item.append(link);
  $("results").append(item);
}

function openView() {
  const match = /^#view=(\d{1,18})$/.exec(location.hash);
  if (!match) { $("viewer").hidden = true; return; }
  const id = match[1];
  const known = state.byId.get(id);
  if (!known) {  // a #view=ID link opened on its own: its facts come from the server
    fetch("/api/photo/" + id, { credentials: "same-origin" })
      .then((response) => response.ok ? response.json() : null)
      .then((facts) => { if (facts && location.hash === "#view=" + id) { state.byId.set(id, facts); openView(); } })
      .catch(() => {});
  }
  const result = known || { id, path: "#" + id };
  $("large").src = "/preview/" + id;
  $("large").alt = result.name || "";
  $("original").href = "/photo/" + id;
  $("raw").hidden = !result.raw_name;  // the RAW of a RAW+JPEG pair: a download
  $("raw").href = "/raw/" + id;
  $("raw").textContent = result.raw_name ? "RAW (" + result.raw_name + ")" : "RAW";
  $("similar").dataset.id = id;
  const facts = $("facts");
  facts.replaceChildren();
  const place = result.lat != null && result.lon != null ? `${result.lat.toFixed(5)}, ${result.lon.toFixed(5)}` : null;
  const camera = [result.make, result.model].filter(Boolean).join(" ");
  const rows = [["Path", result.path], ["RAW", result.raw], ["Taken", result.taken_at], ["Camera", camera], ["Place", place],
                ["Size", result.width ? `${result.width} \u00d7 ${result.height}` : null],
                ["Keywords", (result.keywords || []).join(", ")], ["Rating", result.rating],
                ["Score", result.score != null ? result.score.toFixed(4) : null]];
  for (const [name, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    const term = document.createElement("dt");
    term.textContent = name;
    const text = document.createElement("dd");
    text.textContent = String(value);
    facts.append(term, text);
  }
  $("viewer").hidden = false;
}

function closeView() {
  if (location.hash) history.pushState(null, "", location.pathname + location.search);
  $("viewer").hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  const params = searchParams(location);
  fillForm(params);
  start(params);
  openView();
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const params = paramsFromForm();
    history.pushState(null, "", "/?" + params);
    start(params);
  });
  $("close").addEventListener("click", closeView);
  $("similar").addEventListener("click", () => {
    const params = new URLSearchParams({ like: $("similar").dataset.id });
    history.pushState(null, "", "/?" + params);
    fillForm(new URLSearchParams());
    $("viewer").hidden = true;
    start(params);
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeView(); });
  window.addEventListener("hashchange", openView);
  window.addEventListener("popstate", () => {
    const params = searchParams(location);
    if (String(params) !== String(state.params)) { fillForm(params); start(params); }
    openView();
  });
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting) && state.more) loadPage();
  }, { rootMargin: "600px" }).observe($("more"));
});
