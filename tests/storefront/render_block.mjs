// Render a theme app extension block as the storefront does: the {% schema %} is read (its setting
// defaults become block.settings, its javascript/stylesheet are what Shopify injects) and left out of the
// output; the rest is rendered by liquidjs with the page's objects (product, cart, routes) from stdin.
// Usage: node render_block.mjs <block.liquid> < context.json  →  {"html": "...", "schema": {...}}
import { readFileSync } from "node:fs";
import { Liquid } from "liquidjs";

const source = readFileSync(process.argv[2], "utf8");
const match = source.match(/{%-?\s*schema\s*-?%}([\s\S]*?){%-?\s*endschema\s*-?%}/);
if (!match) throw new Error(`${process.argv[2]} has no {% schema %}`);
const schema = JSON.parse(match[1]);
const settings = Object.fromEntries((schema.settings || []).filter((s) => "default" in s).map((s) => [s.id, s.default]));
const context = JSON.parse(readFileSync(0, "utf8"));
const block = { id: "storeflow-block-1", settings, shopify_attributes: 'data-shopify-editor-block="storeflow-block-1"' };
const engine = new Liquid({ strictFilters: true });
const html = await engine.parseAndRender(source.replace(match[0], ""), { ...context, block });
process.stdout.write(JSON.stringify({ html, schema }));
