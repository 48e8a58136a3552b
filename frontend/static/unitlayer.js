// Thousands of moving units on one canvas. Leaflet draws each circle marker with its own
// path, fill and stroke and redraws the dirty part of its canvas per moved marker; with
// 2,000 units moving every second that is the whole canvas, 4,000 fill/stroke calls many
// times a second, and without a GPU those anti-aliased circles are rasterised on the main
// thread (measured: about 50 ms a redraw, a long task several times a second). This layer
// keeps only a point and a style per unit and blits one small pre-drawn bitmap per style:
// a redraw of 2,000 units takes a few milliseconds and no frame is dropped.
// Hover (tooltip) and click are found by distance, since the canvas takes no mouse events.
//
// It reuses L.Renderer for what Leaflet renderers share: a container sized to the view
// plus padding, repositioned after a pan and transformed during a zoom animation.

// Hover slop around a unit's circle, in pixels.
const HIT_SLOP_PX = 3;

export const UnitLayer = L.Renderer.extend({
  options: { padding: 0.1, pane: "units" },

  initialize(options) {
    L.Renderer.prototype.initialize.call(this, options);
    this.units = new Map();  // id -> {lat, lon, radius, fill, stroke, weight}
    this.tooltipFor = null;  // (id) => content for the hover tooltip
    this.onClick = null;  // (id) => void
    this.hovered = null;
    this.draws = 0;
    this._tip = null;
    this._hoverFrame = 0;
    this._sprites = new Map();  // style key -> {canvas, half}
  },

  count() { return this.units.size; },

  _initContainer() {
    this._container = document.createElement("canvas");
    this._container.className = "unit-layer";
    this._ctx = this._container.getContext("2d");
  },

  _destroyContainer() {
    this._container.remove();
    delete this._ctx;
    delete this._container;
  },

  getEvents() {
    const events = L.Renderer.prototype.getEvents.call(this);
    events.mousemove = this._onMouseMove;
    events.mouseout = this._onMouseOut;
    events.click = this._onClick;
    return events;
  },

  // Called by L.Renderer after a pan or zoom: resize, reposition, redraw.
  _update() {
    if (this._map._animatingZoom && this._bounds) return;
    L.Renderer.prototype._update.call(this);
    const b = this._bounds;
    const size = b.getSize();
    const m = L.Browser.retina ? 2 : 1;
    L.DomUtil.setPosition(this._container, b.min);
    this._container.width = m * size.x;
    this._container.height = m * size.y;
    this._container.style.width = `${size.x}px`;
    this._container.style.height = `${size.y}px`;
    this._ctx.setTransform(m, 0, 0, m, -m * b.min.x, -m * b.min.y);
    this.fire("update");
    this.draw();
  },

  set(id, lat, lon, style) {
    const u = this.units.get(id);
    if (u) {
      u.lat = lat;
      u.lon = lon;
      if (style) Object.assign(u, style);
    } else {
      this.units.set(id, Object.assign({ lat, lon }, style));
    }
  },

  delete(id) {
    this.units.delete(id);
    if (this.hovered === id) this._hover(null);
  },

  has(id) { return this.units.has(id); },

  // A unit's look, drawn once per style into a small bitmap: blitting 2,000 bitmaps is far
  // cheaper than rasterising 2,000 anti-aliased circles (no GPU on many console PCs).
  _sprite(u) {
    const key = `${u.fill}|${u.stroke}|${u.weight}|${u.radius}`;
    let sprite = this._sprites.get(key);
    if (sprite) return sprite;
    const m = L.Browser.retina ? 2 : 1;
    const half = Math.ceil(u.radius + u.weight / 2 + 1);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 2 * half * m;
    const c = canvas.getContext("2d");
    c.scale(m, m);
    c.beginPath();
    c.arc(half, half, u.radius, 0, Math.PI * 2);
    c.fillStyle = u.fill;
    c.fill();
    if (u.weight > 0) {
      c.lineWidth = u.weight;
      c.strokeStyle = u.stroke;
      c.stroke();
    }
    sprite = { canvas, half };
    this._sprites.set(key, sprite);
    return sprite;
  },

  // One pass over the units: a bitmap blit each, at whole pixels.
  draw() {
    if (!this._map || !this._ctx) return;
    const b = this._bounds;
    const ctx = this._ctx;
    const size = b.getSize();
    ctx.clearRect(b.min.x, b.min.y, size.x, size.y);
    const pad = 10;
    for (const u of this.units.values()) {
      const p = this._map.latLngToLayerPoint([u.lat, u.lon]);
      if (p.x < b.min.x - pad || p.y < b.min.y - pad || p.x > b.max.x + pad || p.y > b.max.y + pad) continue;
      const { canvas, half } = this._sprite(u);
      ctx.drawImage(canvas, Math.round(p.x) - half, Math.round(p.y) - half, 2 * half, 2 * half);
    }
    this.draws += 1;
    if (this.hovered !== null) this._placeTip();
  },

  // The unit under a layer point, if any (the nearest within its radius plus slop).
  hit(layerPoint) {
    let best = null, bestD = Infinity;
    for (const [id, u] of this.units) {
      const p = this._map.latLngToLayerPoint([u.lat, u.lon]);
      const d = Math.hypot(p.x - layerPoint.x, p.y - layerPoint.y);
      if (d <= u.radius + HIT_SLOP_PX && d < bestD) { best = id; bestD = d; }
    }
    return best;
  },

  _onMouseMove(ev) {
    if (this._hoverFrame) return;
    this._hoverFrame = requestAnimationFrame(() => {
      this._hoverFrame = 0;
      this._hover(this.hit(ev.layerPoint));
    });
  },

  _onMouseOut() { this._hover(null); },

  _onClick(ev) {
    const id = this.hit(ev.layerPoint);
    if (id !== null && this.onClick) this.onClick(id);
  },

  _hover(id) {
    if (id === this.hovered) return;
    this.hovered = id;
    this._map.getContainer().classList.toggle("over-unit", id !== null);
    if (id === null) {
      if (this._tip) this._map.closeTooltip(this._tip);
      return;
    }
    this._placeTip();
  },

  _placeTip() {
    const u = this.units.get(this.hovered);
    if (!u) { this._hover(null); return; }
    if (!this._tip) {
      this._tip = L.tooltip({ direction: "top", offset: [0, -(u.radius + 2)], className: "hub-tip" });
    }
    this._tip.setLatLng([u.lat, u.lon]);
    if (this.tooltipFor) this._tip.setContent(this.tooltipFor(this.hovered));
    if (!this._map.hasLayer(this._tip)) this._map.openTooltip(this._tip);
  },
});
