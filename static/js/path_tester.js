// propersim path tester: the map with its collision blocks; the arrow keys move a camera marker
// and its pixel position is sent to /path_tester_update/ (at most one request in flight, and
// only when it moved), where a backend can read it from temp_storage/path_tester_env.json.
(function () {
  "use strict";
  const { TILE, ASSETS } = window.VilleMap;
  const setText = (id, t) => { const el = document.getElementById(id); if (el) el.textContent = t; };

  let inFlight = false, lastSent = "";
  function send(x, y) {
    const key = `${x},${y}`;
    if (inFlight || key === lastSent) return;
    inFlight = true;
    fetch("/path_tester_update/", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ camera: { maze: "the_ville", x, y } }) })
      .then((r) => { if (r.ok) { lastSent = key; setText("status", ""); } else setText("status", `server said ${r.status}`); })
      .catch(() => setText("status", "could not reach the server"))
      .finally(() => { inFlight = false; });
  }

  class Tester extends Phaser.Scene {
    preload() {
      window.VilleMap.preload(this);
      this.load.atlas("marker", ASSETS + "characters/Yuriko_Yamamoto.png", ASSETS + "characters/atlas.json");
    }
    create() {
      const { map, sets } = window.VilleMap.create(this);
      const blocks = map.createLayer("Collisions", [sets.blocks_1].filter(Boolean), 0, 0);
      if (blocks) blocks.setDepth(1);
      this.w = map.widthInPixels; this.h = map.heightInPixels;
      this.marker = this.add.sprite(Math.floor(this.w / 2 / TILE) * TILE + 16, Math.floor(this.h / 2 / TILE) * TILE + 16, "marker", "down").setDepth(3);
      this.cameras.main.setBounds(0, 0, this.w, this.h).startFollow(this.marker);
      this.cursors = this.input.keyboard.createCursorKeys();
    }
    update(time, delta) {
      const m = this.marker, v = delta * 0.2;
      if (this.cursors.left.isDown) m.x = Math.max(0, m.x - v);
      if (this.cursors.right.isDown) m.x = Math.min(this.w, m.x + v);
      if (this.cursors.up.isDown) m.y = Math.max(0, m.y - v);
      if (this.cursors.down.isDown) m.y = Math.min(this.h, m.y + v);
      setText("tile", `(${Math.floor(m.x / TILE)}, ${Math.floor(m.y / TILE)})`);
      send(Math.round(m.x * 10) / 10, Math.round(m.y * 10) / 10);
    }
  }


  if (typeof Phaser === "undefined") { setText("status", "Phaser did not load; the map cannot be drawn."); return; }
  new Phaser.Game({ type: VilleMap.renderer(), width: 448, height: 704, parent: "game-container", pixelArt: true, scene: [Tester] });
})();
