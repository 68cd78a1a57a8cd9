// propersim: the Phaser scene and step loop of the simulate, replay and demo pages.
//
// The page hands us its parameters in <script id="page-config" type="application/json">.
// Step loop (one request in flight at a time, with backoff while waiting):
//   simulate: [POST /process_environment/ (tiles of the last step)] -> poll POST /update_environment/
//             until movement/<step>.json exists -> animate -> step + 1 -> ...
//   replay:   poll /update_environment/ only (never writes to storage).
//   demo:     steps come from the page itself (compressed run); no requests.
// Model text (actions, chat, suggestions, reasons) is always set with textContent.
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("page-config").textContent);
  const { TILE, ASSETS } = window.VilleMap;
  const DIRS = ["down", "left", "right", "up"];

  const state = {
    step: cfg.step,
    phase: cfg.start_phase || "update",
    paused: !!cfg.paused,
    speed: 1,       // replay speed (1x, 2x, ...): divides walking time and the pause between steps
    ended: false,
    tiles: {},      // name -> [x, y], the tile each persona stands on
    actors: {},     // name -> {sprite, bubble, text, sheet}
    scores: [],     // [[minute of day, score]]
    day: null,
    scene: null,
  };

  // ---- small helpers ----------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function setText(id, text) {
    const el = $(id);
    if (el) el.textContent = text === null || text === undefined ? "" : String(text);
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function status(msg) { setText("status", msg); }
  const underscore = (name) => name.replace(/ /g, "_");
  const px = (t) => t * TILE + TILE / 2;

  /** An action address as a place a person reads: "<persona> John Lin" (the assistant keeps to
   *  the user) -> "with John Lin"; "the Ville:Lin family's house:kitchen" -> "Lin family's house ›
   *  kitchen". The same rule as `readable_place` in src/web/persona_state.rs. */
  function readablePlace(address) {
    const a = String(address || "").trim();
    if (a.startsWith("<persona>")) return `with ${a.slice("<persona>".length).trim()}`;
    if (a.startsWith("<waiting>")) return "waiting";
    const parts = a.split(":").map((p) => p.trim()).filter((p) => p !== "");
    return parts.length <= 1 ? parts.join("") : parts.slice(1).join(" › ");
  }

  /** Whether a suggestion is the assistant's choice to stay quiet: the whole text (trimmed,
   *  outer quotes and a final period removed) is cfg.no_recommendation ("No Recommendation"),
   *  ignoring case; the rule of `Suggestion::from_text` in src/suggestion.rs. */
  function isNoRecommendation(s) {
    const t = String(s).trim().replace(/^["']+|["']+$/g, "").trim().replace(/\.+$/, "").trim();
    return t.toLowerCase() === String(cfg.no_recommendation || "No Recommendation").toLowerCase();
  }

  /** "act @ address" -> [act, address]; no "@" -> [whole, ""]. */
  function splitDescription(desc) {
    if (typeof desc !== "string") return ["", ""];
    const i = desc.indexOf("@");
    return i < 0 ? [desc.trim(), ""] : [desc.slice(0, i).trim(), desc.slice(i + 1).trim()];
  }

  function renderChat(el, chat) {
    if (!el) return;
    el.replaceChildren();
    if (!Array.isArray(chat) || chat.length === 0) {
      const em = document.createElement("em");
      em.textContent = "None at the moment";
      el.appendChild(em);
      return;
    }
    for (const line of chat) {
      const div = document.createElement("div");
      div.textContent = Array.isArray(line) ? `${line[0]}: ${line[1]}` : String(line);
      el.appendChild(div);
    }
  }

  /** "February 13, 2025, 08:15:00" -> {day: "February 13, 2025", minute: 495}. */
  function parseClock(t) {
    if (typeof t !== "string") return null;
    const m = t.match(/^(.*),\s*(\d{1,2}):(\d{2})(?::(\d{2}))?$/);
    if (!m) return null;
    return { day: m[1], minute: Number(m[2]) * 60 + Number(m[3]) + Number(m[4] || 0) / 60 };
  }

  function scoreNumber(v) {
    if (typeof v === "number") return v;
    if (typeof v === "string" && v.trim() !== "" && !isNaN(Number(v))) return Number(v);
    return null;
  }

  // ---- today's score chart -----------------------------------------------------------------
  function addScore(curr_time, score) {
    const c = parseClock(curr_time);
    if (!c || score === null) return;
    if (state.day !== c.day) { state.day = c.day; state.scores = []; setText("chart_day", c.day); }
    state.scores.push([c.minute, score]);
  }

  function drawChart() {
    const cv = $("score_chart");
    if (!cv || !cv.getContext) return;
    const g = cv.getContext("2d");
    const W = cv.width, H = cv.height, L = 28, B = 18, T = 8, R = 10;
    g.clearRect(0, 0, W, H);
    // Scores are 0-4 (the rubric's four checks); a larger one from elsewhere widens the axis.
    const top = Math.max(4, ...state.scores.map((s) => s[1]));
    // x spans the hours that have scores (at least one hour), so a morning's points spread out.
    const mins = state.scores.map((s) => s[0]);
    const x0 = mins.length ? Math.floor(Math.min(...mins) / 60) * 60 : 0;
    const x1 = Math.max(x0 + 60, mins.length ? Math.ceil(Math.max(...mins) / 60) * 60 : 1440);
    const x = (m) => L + (W - L - R) * ((m - x0) / (x1 - x0));
    const y = (s) => H - B - (H - B - T) * (s / top);
    g.strokeStyle = "#ccc"; g.fillStyle = "#777"; g.font = "10px sans-serif"; g.lineWidth = 1;
    for (let s = 0; s <= top; s += Math.max(1, Math.round(top / 5))) {
      g.beginPath(); g.moveTo(L, y(s)); g.lineTo(W - R, y(s)); g.stroke();
      g.fillText(String(s), 4, y(s) + 3);
    }
    const span = x1 - x0, tick = span <= 120 ? 15 : span <= 360 ? 60 : 180;
    const hhmm = (m) => `${String(Math.floor(m / 60) % 24).padStart(2, "0")}:${String(Math.round(m % 60)).padStart(2, "0")}`;
    for (let m = x0; m <= x1 - (span > 360 ? tick : 0); m += tick) g.fillText(hhmm(m), Math.min(x(m) - 12, W - 30), H - 4);
    if (state.scores.length === 0) { g.fillText("no scores yet today", L + 40, H / 2); return; }
    g.strokeStyle = "#4a7fc1"; g.lineWidth = 2; g.beginPath();
    state.scores.forEach(([m, s], i) => (i ? g.lineTo(x(m), y(s)) : g.moveTo(x(m), y(s))));
    g.stroke();
    g.fillStyle = "#1d4f8f";
    for (const [m, s] of state.scores) { g.beginPath(); g.arc(x(m), y(s), 2.5, 0, 7); g.fill(); }
  }

  // ---- network ------------------------------------------------------------------------------
  async function postJson(url, body) {
    // application/json: the server refuses other types on the endpoints that change state, so
    // a page on another site (which could only send text/plain without a preflight) cannot.
    return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  async function errorText(resp) {
    try { const j = await resp.json(); return j.error || resp.statusText; } catch (e) { return resp.statusText; }
  }

  /** Post the tiles of every persona as environment/<step>.json; retries until the server answers. */
  async function postEnvironment() {
    const environment = {};
    for (const p of cfg.personas) {
      const t = state.tiles[p.name];
      if (t) environment[p.name] = { maze: "the_ville", x: t[0], y: t[1] };
    }
    let delay = 200;
    for (;;) {
      let resp = null;
      try { resp = await postJson(cfg.urls.process, { step: state.step, sim_code: cfg.sim_code, environment }); } catch (e) { /* retry */ }
      if (resp && resp.ok) return true;
      if (resp && resp.status >= 400 && resp.status < 500) {
        status(`The server refused the environment for step ${state.step}: ${await errorText(resp)}`);
        return false;
      }
      status(`Could not send step ${state.step}; retrying…`);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }

  /** Poll for movement/<step>.json; null when paused or stopped. */
  async function pollMovement() {
    let delay = 100;
    for (;;) {
      if (state.paused) return null;
      let resp = null;
      try { resp = await postJson(cfg.urls.update, { step: state.step, sim_code: cfg.sim_code }); } catch (e) { /* retry */ }
      if (resp && resp.ok) {
        let data = null;
        try { data = await resp.json(); } catch (e) { /* retry */ }
        if (data && data["<step>"] == state.step && data.persona) { status(""); return data; }
      } else if (resp && resp.status >= 400 && resp.status < 500) {
        status(`Stopped: ${await errorText(resp)}`);
        state.ended = true;
        return null;
      }
      const pastEnd = cfg.mode === "replay" && cfg.last_step !== null && cfg.last_step !== undefined && state.step > cfg.last_step;
      status(pastEnd ? `End of the recorded run (last step ${cfg.last_step}); watching for more…` : `Waiting for step ${state.step}…`);
      await sleep(delay);
      delay = Math.min(delay * 1.6, pastEnd ? 5000 : 2000);
    }
  }

  // ---- drawing ------------------------------------------------------------------------------
  function tweenTo(scene, target, x, y, ms) {
    return new Promise((resolve) => scene.tweens.add({ targets: target, x, y, duration: ms, onComplete: resolve }));
  }

  /** Tiles to walk from `from` to the movement target: the entry's "path" if usable, else x then y. */
  function walkPath(from, entry) {
    const to = entry.movement;
    let path = [];
    if (Array.isArray(entry.path) && entry.path.every((t) => Array.isArray(t) && t.length >= 2)) {
      path = entry.path.map((t) => [Number(t[0]), Number(t[1])]);
    } else if (from) {
      let [x, y] = from;
      while (x !== to[0]) { x += x < to[0] ? 1 : -1; path.push([x, y]); }
      while (y !== to[1]) { y += y < to[1] ? 1 : -1; path.push([x, y]); }
    }
    while (path.length && from && path[0][0] === from[0] && path[0][1] === from[1]) path.shift();
    const last = path[path.length - 1];
    if (!last || last[0] !== to[0] || last[1] !== to[1]) path.push([to[0], to[1]]);
    return path;
  }

  function tileMs(steps) {
    if (cfg.mode === "demo") return Math.max(16, (32 / (cfg.play_speed || 2)) * 16.7);
    return Math.min(220, 1400 / Math.max(1, steps)) / state.speed;
  }

  async function walk(scene, name, entry) {
    const a = state.actors[name];
    const to = entry.movement;
    if (!a || !Array.isArray(to) || to.length < 2) return;
    const from = state.tiles[name];
    state.tiles[name] = [Number(to[0]), Number(to[1])];
    if (!from) { a.sprite.setPosition(px(to[0]), px(to[1])).setVisible(true); a.bubble.setVisible(true); return; }
    const path = walkPath(from, entry);
    const ms = tileMs(path.length);
    let cur = from, dir = "down";
    for (const t of path) {
      const dx = t[0] - cur[0], dy = t[1] - cur[1];
      if (dx === 0 && dy === 0) continue;
      dir = Math.abs(dx) >= Math.abs(dy) ? (dx > 0 ? "right" : "left") : (dy > 0 ? "down" : "up");
      a.sprite.anims.play(`${a.sheet}-${dir}-walk`, true);
      await tweenTo(scene, a.sprite, px(t[0]), px(t[1]), ms);
      cur = t;
    }
    a.sprite.anims.stop();
    a.sprite.setFrame(dir);
  }

  /** Update the clock and the side panels from one movement; `record` adds its score to the chart. */
  function showStep(mv, record = true) {
    const t = mv.meta && mv.meta.curr_time;
    if (t) setText("game-time-content", t);
    for (const p of cfg.personas) {
      const e = mv.persona[p.name];
      if (!e) continue;
      const u = underscore(p.name);
      if ("description" in e) {
        const [act, where] = splitDescription(e.description);
        setText(`current_action__${u}`, act);
        setText(`target_address__${u}`, readablePlace(where));
      }
      if ("chat" in e) renderChat($(`chat__${u}`), e.chat);
      const a = state.actors[p.name];
      if (a && "pronunciatio" in e) a.text.setText(`${p.initials}: ${e.pronunciatio === null ? "" : e.pronunciatio}`);
    }
    const asst = mv.persona[cfg.assistant];
    if (asst && "suggestion" in asst) {
      const s = asst.suggestion;
      if (typeof s === "string" && s.trim() !== "" && isNoRecommendation(s)) {
        setText("suggestion", "No Recommendation: the assistant chose to stay quiet.");
        setText("suggestion_time", t ? `(${t})` : "");
        setText("suggestion_state", "stayed quiet (No Recommendation)");
      } else if (typeof s === "string" && s.trim() !== "") {
        setText("suggestion", s);
        setText("suggestion_time", t ? `(${t})` : "");
        setText("suggestion_state", "recommended");
      } else {
        setText("suggestion_state", "no turn this step");
      }
      setText("user_action", asst.user_action_for_suggestion === null || asst.user_action_for_suggestion === undefined ? "—" : asst.user_action_for_suggestion);
      const score = scoreNumber(asst.eval_res_score);
      if (score !== null) {
        setText("eval_score", asst.eval_res_score);
        setText("eval_reason", asst.eval_res_reason);
        if (record) { addScore(t, score); drawChart(); }
      }
    }
  }

  async function applyStep(scene, mv) {
    showStep(mv);
    await Promise.all(cfg.personas.filter((p) => mv.persona[p.name]).map((p) => walk(scene, p.name, mv.persona[p.name])));
  }

  // ---- demo clock ---------------------------------------------------------------------------
  const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
  function demoClock(step) {
    const m = String(cfg.start_datetime || "").match(/^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)$/);
    if (!m) return "";
    const base = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
    const d = new Date(base + (step - cfg.step) * (cfg.sec_per_step || 10) * 1000);
    const two = (n) => String(n).padStart(2, "0");
    return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}, ${d.getUTCFullYear()}, ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}`;
  }

  // ---- replay: step scrubber and speed -------------------------------------------------------
  // The URL stays the original's /replay/<sim>/<step>/: jumping loads the page at that step;
  // the speed and a pause ride along in the query string (?speed=4&paused=1).
  const REPLAY_STEP_MS = 500;  // the least time a step stays on screen at 1x
  const query = new URLSearchParams(location.search);

  /** After each step: the scrubber follows unless it is being dragged, and "State Details"
   *  links point at the step now shown. */
  function followStep() {
    const sc = $("scrubber");
    if (sc && !state.scrubbing) {
      sc.value = String(Math.min(state.step, Number(sc.max)));
      setText("scrubber_value", sc.value);
    }
    for (const a of document.querySelectorAll("a.details[data-persona]")) {
      a.href = `/replay_persona_state/${cfg.sim_code}/${state.step}/${a.dataset.persona}/`;
    }
  }

  function queryString() {
    const q = new URLSearchParams();
    if (state.speed !== 1) q.set("speed", String(state.speed));
    if (state.paused) q.set("paused", "1");
    const qs = q.toString();
    return qs ? `?${qs}` : "";
  }

  function replayUrl(step) {
    return `/replay/${encodeURIComponent(cfg.sim_code)}/${step}/${queryString()}`;
  }

  function setSpeed(speed) {
    state.speed = speed;
    for (const b of document.querySelectorAll("#speeds button[data-speed]")) {
      b.setAttribute("aria-pressed", Number(b.dataset.speed) === speed ? "true" : "false");
    }
    history.replaceState(null, "", location.pathname + queryString());
  }

  function setupReplayControls() {
    if (cfg.mode !== "replay") return;
    const speed = Number(query.get("speed"));
    if ([1, 2, 4, 8, 16].includes(speed)) state.speed = speed;
    if (query.get("paused") === "1") state.paused = true;
    for (const b of document.querySelectorAll("#speeds button[data-speed]")) {
      b.onclick = () => setSpeed(Number(b.dataset.speed));
      b.setAttribute("aria-pressed", Number(b.dataset.speed) === state.speed ? "true" : "false");
    }
    const sc = $("scrubber");
    if (!sc) return;
    sc.addEventListener("input", () => { state.scrubbing = true; setText("scrubber_value", sc.value); });
    sc.addEventListener("change", () => {
      state.scrubbing = false;
      status(`Jumping to step ${sc.value}…`);
      location.assign(replayUrl(Number(sc.value)));
    });
  }

  // ---- the loop -----------------------------------------------------------------------------
  async function run(scene) {
    const last = cfg.last_step;
    for (;;) {
      if (state.ended) return;
      if (state.paused) { await sleep(200); continue; }
      if (cfg.mode === "demo") {
        if (last !== null && last !== undefined && state.step > last) {
          status(`End of the run: step ${last} was the last one. Reload the page to play it again.`);
          state.ended = true;
          return;
        }
        const persona = Object.assign({}, (cfg.all_movement || {})[String(state.step)] || {});
        const extra = (cfg.assistant_log || {})[String(state.step)];
        if (extra) persona[cfg.assistant] = Object.assign({}, persona[cfg.assistant] || {}, extra);
        const clock = (extra && extra.curr_time) || demoClock(state.step);
        await applyStep(scene, { persona, meta: { curr_time: clock } });
        await sleep(cfg.play_speed >= 32 ? 0 : 16);
      } else {
        if (state.phase === "process") {
          if (!(await postEnvironment())) { state.ended = true; return; }
          state.phase = "update";
        }
        const mv = await pollMovement();
        if (!mv) continue;
        await applyStep(scene, mv);
        if (cfg.mode === "simulate") state.phase = "process";
        if (cfg.mode === "replay") await sleep(REPLAY_STEP_MS / state.speed);
      }
      state.step += 1;
      setText("step", state.step);
      followStep();
    }
  }

  function setPaused(paused) {
    state.paused = paused;
    if (state.scene) (paused ? state.scene.scene.pause() : state.scene.scene.resume());
    $("pause_button").disabled = paused;
    $("play_button").disabled = !paused;
    if (paused) status("Paused.");
    else status("");
    if (cfg.mode === "simulate") postJson(cfg.urls.control, { paused }).catch(() => {});
    if (cfg.mode === "replay") history.replaceState(null, "", location.pathname + queryString());
  }

  // ---- the Phaser scene ---------------------------------------------------------------------
  class Ville extends Phaser.Scene {
    constructor() { super("ville"); }

    preload() {
      window.VilleMap.preload(this);
      for (const sheet of new Set(cfg.personas.map((p) => p.sprite))) {
        this.load.atlas(`sheet_${sheet}`, `${ASSETS}characters/${sheet}.png`, `${ASSETS}characters/atlas.json`);
      }
      this.load.image("speech_bubble", ASSETS + "speech_bubble/v3.png");
    }

    create() {
      const { map } = window.VilleMap.create(this);
      for (const sheet of new Set(cfg.personas.map((p) => p.sprite))) {
        for (const dir of DIRS) {
          this.anims.create({
            key: `${sheet}-${dir}-walk`,
            frames: this.anims.generateFrameNames(`sheet_${sheet}`, { prefix: `${dir}-walk.`, start: 0, end: 3, zeroPad: 3 }),
            frameRate: 8, repeat: -1,
          });
        }
      }
      for (const p of cfg.personas) {
        const placed = p.x !== null && p.y !== null && p.x !== undefined;
        const sprite = this.add.sprite(placed ? px(p.x) : 0, placed ? px(p.y) : 0, `sheet_${p.sprite}`, "down").setDepth(1).setVisible(placed);
        const bg = this.add.image(0, 0, "speech_bubble").setDisplaySize(84, 40).setOrigin(0.5, 1);
        const text = this.add.text(0, -24, `${p.initials}:`, { font: "13px monospace", color: "#111" }).setOrigin(0.5, 0.5);
        const bubble = this.add.container(sprite.x, sprite.y - 14, [bg, text]).setDepth(3).setVisible(placed);
        state.actors[p.name] = { sprite, bubble, text, sheet: p.sprite };
        if (placed) state.tiles[p.name] = [p.x, p.y];
      }
      if (cfg.previous && cfg.previous.persona) showStep(cfg.previous, false);
      const cam = this.cameras.main;
      cam.setBounds(0, 0, map.widthInPixels, map.heightInPixels);
      this.cursors = this.input.keyboard.createCursorKeys();
      state.scene = this;
      if (state.paused) setPaused(true);
      run(this).catch((e) => status(`Stopped by an error: ${e && e.message ? e.message : e}`));
    }

    update(time, delta) {
      for (const name in state.actors) {
        const a = state.actors[name];
        a.bubble.setPosition(a.sprite.x, a.sprite.y - 14);
      }
      const cam = this.cameras.main, speed = delta * 0.4;
      if (this.cursors.left.isDown) cam.scrollX -= speed;
      if (this.cursors.right.isDown) cam.scrollX += speed;
      if (this.cursors.up.isDown) cam.scrollY -= speed;
      if (this.cursors.down.isDown) cam.scrollY += speed;
    }
  }

  // ---- start ----------------------------------------------------------------------------------
  setupReplayControls();
  for (const [t, s] of cfg.scores || []) addScore(t, s);
  drawChart();
  if (cfg.previous && cfg.previous.persona) showStep(cfg.previous, false);
  $("pause_button").onclick = () => setPaused(true);
  $("play_button").onclick = () => setPaused(false);
  $("play_button").disabled = !state.paused;

  if (typeof Phaser === "undefined") {
    status(`Phaser did not load (tried ${document.querySelector("script[src*=phaser]")?.src || "its URL"}); the map cannot be drawn.`);
    return;
  }
  // Exposed for debugging in the console and for the browser test's checks.
  window.propersimGame = new Phaser.Game({
    type: VilleMap.renderer(),
    width: 448,
    height: 704,
    parent: "game-container",
    pixelArt: true,
    backgroundColor: "#1e2a1e",
    scene: [Ville],
  });
})();
