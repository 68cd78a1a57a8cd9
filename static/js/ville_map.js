// propersim: the Ville map as the pages draw it (the tilesets of the original's Tiled map and
// its drawn layers), shared by the simulator pages (game.js) and the path tester.
window.VilleMap = (function () {
  "use strict";
  const TILE = 32;
  const ASSETS = "/static/assets/";
  const MAP_URL = ASSETS + "the_ville/visuals/the_ville_jan7.json";
  const MAP_DIR = ASSETS + "the_ville/visuals/map_assets/";
  // [name in Tiled, Phaser key, file under map_assets/]
  const TILESETS = [
    ["blocks", "blocks_1", "blocks/blocks_1.png"],
    ["Room_Builder_32x32", "walls", "v1/Room_Builder_32x32.png"],
    ["interiors_pt1", "interiors_pt1", "v1/interiors_pt1.png"],
    ["interiors_pt2", "interiors_pt2", "v1/interiors_pt2.png"],
    ["interiors_pt3", "interiors_pt3", "v1/interiors_pt3.png"],
    ["interiors_pt4", "interiors_pt4", "v1/interiors_pt4.png"],
    ["interiors_pt5", "interiors_pt5", "v1/interiors_pt5.png"],
    ["CuteRPG_Field_B", "CuteRPG_Field_B", "cute_rpg_word_VXAce/tilesets/CuteRPG_Field_B.png"],
    ["CuteRPG_Field_C", "CuteRPG_Field_C", "cute_rpg_word_VXAce/tilesets/CuteRPG_Field_C.png"],
    ["CuteRPG_Harbor_C", "CuteRPG_Harbor_C", "cute_rpg_word_VXAce/tilesets/CuteRPG_Harbor_C.png"],
    ["CuteRPG_Village_B", "CuteRPG_Village_B", "cute_rpg_word_VXAce/tilesets/CuteRPG_Village_B.png"],
    ["CuteRPG_Forest_B", "CuteRPG_Forest_B", "cute_rpg_word_VXAce/tilesets/CuteRPG_Forest_B.png"],
    ["CuteRPG_Desert_C", "CuteRPG_Desert_C", "cute_rpg_word_VXAce/tilesets/CuteRPG_Desert_C.png"],
    ["CuteRPG_Mountains_B", "CuteRPG_Mountains_B", "cute_rpg_word_VXAce/tilesets/CuteRPG_Mountains_B.png"],
    ["CuteRPG_Desert_B", "CuteRPG_Desert_B", "cute_rpg_word_VXAce/tilesets/CuteRPG_Desert_B.png"],
    ["CuteRPG_Forest_C", "CuteRPG_Forest_C", "cute_rpg_word_VXAce/tilesets/CuteRPG_Forest_C.png"],
  ];
  // Drawn layers in order; "Interior Furniture L2 " really has a trailing space in the map file.
  const LAYERS = ["Bottom Ground", "Exterior Ground", "Exterior Decoration L1", "Exterior Decoration L2",
    "Interior Ground", "Wall", "Interior Furniture L1", "Interior Furniture L2 ", "Foreground L1", "Foreground L2"];

  // Queue the map and its tileset images (call from a scene's preload).
  function preload(scene) {
    scene.load.tilemapTiledJSON("map", MAP_URL);
    for (const [, key, file] of TILESETS) scene.load.image(key, MAP_DIR + file);
  }

  // Draw the layers, foreground above the sprites (call from create); returns the tilemap and
  // its tilesets by Phaser key.
  function create(scene) {
    const map = scene.make.tilemap({ key: "map" });
    const sets = {};
    for (const [name, key] of TILESETS) sets[key] = map.addTilesetImage(name, key);
    const all = TILESETS.slice(1).map(([, key]) => sets[key]).filter(Boolean);
    for (const name of LAYERS) {
      const tilesets = name === "Wall" ? [sets.CuteRPG_Field_C, sets.walls].filter(Boolean) : all;
      const layer = map.createLayer(name, tilesets, 0, 0);
      if (layer && name.startsWith("Foreground")) layer.setDepth(2);
    }
    return { map, sets };
  }

  // WebGL only if it can hold the tallest tileset (interiors_pt3 is 10032 px high); software
  // WebGL (e.g. headless Chromium) often stops at 8192 and would draw those tiles black.
  function renderer() {
    try {
      const gl = document.createElement("canvas").getContext("webgl");
      if (gl && gl.getParameter(gl.MAX_TEXTURE_SIZE) >= 10240) return Phaser.WEBGL;
    } catch (e) { /* fall through */ }
    return Phaser.CANVAS;
  }

  return { TILE, ASSETS, preload, create, renderer };
})();
