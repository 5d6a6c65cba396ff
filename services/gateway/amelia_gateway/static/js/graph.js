// A workflow's graph (ListWorkflows' nodes and edges) drawn as SVG, top to bottom so it fits a
// phone: layers by longest path from `__start__`, edges that go back (loops) drawn as curves on
// the right, conditional edges dashed. `setState(node, state)` lights a node as the run moves.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 340;
const LAYER = 64;
const BOX_W = 118;
const BOX_H = 30;
export const START = "__start__";
export const END = "__end__";

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  for (const child of children) if (child) el.append(child);
  return el;
}

/**
 * Layers of a graph: {layers: [[node]], depth: Map, back: Set("a>b")}. Pure (no DOM): edges that
 * close a cycle (found by a depth-first walk from START) are "back" edges and do not add depth.
 */
export function layout(nodes, edges) {
  const all = [START, ...nodes.filter((n) => n !== START && n !== END), END];
  for (const edge of edges) for (const n of [edge.source, edge.target]) if (!all.includes(n)) all.splice(all.length - 1, 0, n);
  const out = new Map(all.map((n) => [n, []]));
  for (const edge of edges) out.get(edge.source).push(edge.target);
  const back = new Set();
  const state = new Map(); // 1: on the walk's stack, 2: done
  const visit = (node) => {
    state.set(node, 1);
    for (const next of out.get(node)) {
      if (state.get(next) === 1) back.add(`${node}>${next}`);
      else if (!state.has(next)) visit(next);
    }
    state.set(node, 2);
  };
  visit(START);
  for (const node of all) if (!state.has(node)) visit(node);
  const depth = new Map(all.map((n) => [n, 0]));
  // Longest path over the forward edges (at most |nodes| rounds).
  for (let round = 0; round < all.length; round += 1) {
    let changed = false;
    for (const edge of edges) {
      if (back.has(`${edge.source}>${edge.target}`)) continue;
      const wanted = depth.get(edge.source) + 1;
      if (wanted > depth.get(edge.target)) {
        depth.set(edge.target, wanted);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const last = Math.max(...depth.values());
  if (depth.get(END) < last || all.some((n) => n !== END && depth.get(n) >= depth.get(END))) depth.set(END, last + 1);
  const layers = [];
  for (const node of all) {
    const d = depth.get(node);
    (layers[d] ||= []).push(node);
  }
  return { layers: layers.filter(Boolean), depth, back };
}

export class GraphView {
  constructor({ nodes = [], edges = [] }) {
    this.boxes = new Map();
    const { layers, back } = layout(nodes, edges);
    const position = new Map();
    layers.forEach((layer, row) => {
      layer.forEach((node, i) => {
        position.set(node, { x: ((i + 1) * (WIDTH - 40)) / (layer.length + 1) + 10, y: row * LAYER + 24 });
      });
    });
    const height = layers.length * LAYER + 8;
    this.element = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "graph", role: "img", id: "run-graph",
      "aria-label": `Workflow graph: ${nodes.join(", ")}` });
    const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: "7", refY: "4", markerWidth: "7",
      markerHeight: "7", orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L8,4 L0,8 z", class: "arrow" })));
    this.element.append(defs);
    for (const edge of edges) {
      const a = position.get(edge.source);
      const b = position.get(edge.target);
      if (!a || !b) continue;
      let d;
      if (edge.source === edge.target) {
        const x = a.x + BOX_W / 2;
        d = `M${x},${a.y - 6} C${x + 34},${a.y - 26} ${x + 34},${a.y + 26} ${x},${a.y + 6}`;
      } else if (back.has(`${edge.source}>${edge.target}`)) {
        const bulge = Math.min(WIDTH - 4, Math.max(a.x, b.x) + BOX_W / 2 + 26);
        d = `M${a.x + BOX_W / 2},${a.y} C${bulge},${a.y} ${bulge},${b.y} ${b.x + BOX_W / 2},${b.y}`;
      } else {
        d = `M${a.x},${a.y + BOX_H / 2} L${b.x},${b.y - BOX_H / 2 - 1}`;
      }
      this.element.append(svg("path", { d, class: `edge${edge.conditional ? " conditional" : ""}`, "marker-end": "url(#arrow)",
        "data-source": edge.source, "data-target": edge.target }));
    }
    for (const [node, { x, y }] of position) {
      const terminal = node === START || node === END;
      const w = terminal ? 56 : BOX_W;
      const label = terminal ? (node === START ? "start" : "end") : node.length > 16 ? `${node.slice(0, 15)}…` : node;
      const group = svg("g", { class: `gnode${terminal ? " terminal" : ""}`, "data-node": node, "data-state": "pending" },
        svg("title", {}, node),
        svg("rect", { x: x - w / 2, y: y - BOX_H / 2, width: w, height: BOX_H, rx: terminal ? 15 : 7 }));
      const text = svg("text", { x, y: y + 4, "text-anchor": "middle" });
      text.textContent = label;
      group.append(text);
      this.element.append(group);
      this.boxes.set(node, group);
    }
  }

  setState(node, state) {
    const group = this.boxes.get(node);
    if (group) group.dataset.state = state;
  }
}
