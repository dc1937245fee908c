/* The gallery's image viewers (no inline script: the CSP allows only our own files).
 * [data-viewer] elements carry their source as JSON: a deep-zoom pyramid (OpenSeadragon over
 * /renders/ID/deepzoom_files/, its descriptor inline), the PNG for renders up to 2048 px, or a 360°
 * panorama (Pannellum: cube-face tiles under /renders/ID/cube/ above 4096 px wide, else the PNG).
 * [data-compare] holds two viewers whose zoom and pan are kept in step.
 * Each viewer element gets data-state="open" once its image opened and data-painted="MS" (ms since
 * navigation start) once the first screen is fully drawn: the browser tests and bench read them. */
(function () {
  "use strict";
  var PREFIX = "/static/vendor/openseadragon/images/";
  document.documentElement.classList.add("viewers-on");  // the viewer boxes show only where this script runs

  var NOT_READY = "The deep-zoom pyramid is not ready yet: reload in a moment, or download the PNG.";

  /* Zoom in, zoom out, whole image, full page: plain buttons above the viewer; returns their ids. */
  function toolbar(element) {
    var bar = document.createElement("div"), ids = {};
    bar.className = "viewer-tools";
    [["zoom-in", "+", "Zoom in"], ["zoom-out", "\u2212", "Zoom out"], ["home", "Fit", "The whole image"],
     ["full-page", "Full page", "Full page (Esc leaves)"]].forEach(function (spec) {
      var button = document.createElement("button");
      button.type = "button";
      button.id = element.id + "-" + spec[0];
      button.textContent = spec[1];
      button.title = spec[2];
      bar.appendChild(button);
      ids[spec[0]] = button.id;
    });
    element.parentNode.insertBefore(bar, element);
    return ids;
  }

  function flat(element, source) {
    if (source.pending) {  // a big render whose pyramid is being built: never the whole PNG instead
      element.dataset.state = "failed";
      element.textContent = NOT_READY;
      return null;
    }
    // The descriptor comes inline (no round trip before the first tile); small renders load the PNG.
    var tileSource = source.deepzoom || {type: "image", url: source.image};
    var buttons = toolbar(element);
    var viewer = OpenSeadragon({
      element: element, prefixUrl: PREFIX, tileSources: tileSource, drawer: "canvas",
      // Our own text buttons: OpenSeadragon's would fetch 20 button images before the first tile.
      zoomInButton: buttons["zoom-in"], zoomOutButton: buttons["zoom-out"], homeButton: buttons.home,
      fullPageButton: buttons["full-page"],
      showNavigator: true, maxZoomPixelRatio: 4, visibilityRatio: 0.5, crossOriginPolicy: false,
      // Ask for every tile of the view at once (OpenSeadragon's default is one per frame) and only at the
      // level the view needs (no blurry levels first): fewer requests and the first screen drawn sooner.
      maxTilesPerFrame: 64, immediateRender: true, minPixelRatio: 0.9
    });
    viewer.addHandler("open", function () {
      element.dataset.state = "open";
      var item = viewer.world.getItemAt(0);
      var done = function () {
        if (item.getFullyLoaded() && !element.dataset.painted) {
          element.dataset.painted = String(Math.round(performance.now()));
        }
      };
      item.addHandler("fully-loaded-change", done);
      done();
    });
    viewer.addHandler("open-failed", function (event) {
      element.dataset.state = "failed";
      element.textContent = NOT_READY;
    });
    return viewer;
  }

  function sphere(element, source) {
    if (source.pending) {  // the pyramid, and a wide panorama's cube faces with it, not built yet
      element.dataset.state = "failed";
      element.textContent = "The 360° view is not ready yet: reload in a moment.";
      return null;
    }
    element.dataset.state = "loading";
    // Above 4096 px wide: cube-face tiles, fetched for the view and level shown; else the PNG itself.
    var settings = source.cube ? {type: "multires", multiRes: source.cube}
                               : {type: "equirectangular", panorama: source.panorama};
    var viewer = pannellum.viewer(element, Object.assign(settings, {autoLoad: true, showFullscreenCtrl: true,
                                                                    compass: false}));
    var opened = function () {
      if (element.dataset.state === "open") { return; }
      element.dataset.state = "open";
      element.dataset.painted = String(Math.round(performance.now()));
    };
    viewer.on("load", opened);
    if (viewer.isLoaded()) { opened(); }  // multires loads inside pannellum.viewer(), before `on` is set
    viewer.on("error", function (message) { element.dataset.state = "failed"; element.dataset.error = message; });
    return viewer;
  }

  /* Zoom and pan of each viewer follow the other's; `leading` stops the echo. */
  function keepInStep(a, b) {
    if (!a || !b) { return; }
    var leading = null;
    function follow(from, to) {
      var sync = function () {
        if (leading && leading !== from) { return; }
        leading = from;
        to.viewport.zoomTo(from.viewport.getZoom(), null, true);
        to.viewport.panTo(from.viewport.getCenter(), true);
        leading = null;
      };
      from.addHandler("zoom", sync);
      from.addHandler("pan", sync);
    }
    follow(a, b);
    follow(b, a);
  }

  var viewers = {};
  document.querySelectorAll("[data-viewer]").forEach(function (element) {
    var source = JSON.parse(element.dataset.source);
    viewers[element.id] = element.dataset.viewer === "sphere" ? sphere(element, source) : flat(element, source);
  });
  document.querySelectorAll("[data-compare]").forEach(function (pair) {
    var ids = pair.dataset.compare.split(" ");
    keepInStep(viewers[ids[0]], viewers[ids[1]]);
  });
  window.linstudioViewers = viewers;
})();
