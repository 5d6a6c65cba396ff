// Unit tests of js/views/threadmeta.js: the thread page's metadata edit as UpdateThread's merge
// patch (a key taken out of the edited object is sent null, which removes it).
import assert from "node:assert/strict";
import { test } from "node:test";

const STATIC = new URL("../../../services/gateway/amelia_gateway/static/js/", import.meta.url);
const { metadataPatch, parseMetadata } = await import(new URL("views/threadmeta.js", STATIC));

test("an edit sends what changed and null for what was taken out", () => {
  const old = { team: "herons", stage: "draft", n: 2, tags: ["a"] };
  const wanted = { team: "herons", stage: "review", tags: ["a", "b"], owner: "ada" };
  assert.deepEqual(metadataPatch(old, wanted), { stage: "review", tags: ["a", "b"], owner: "ada", n: null });
  assert.deepEqual(metadataPatch(old, old), {});
  assert.deepEqual(metadataPatch({ a: 1 }, {}), { a: null });
});

test("the edited text must be a JSON object; {} is one (every key removed)", () => {
  assert.deepEqual(parseMetadata(" "), {});
  assert.deepEqual(parseMetadata('{"a": 1}'), { a: 1 });
  assert.match(parseMetadata("[1]").message, /must be a JSON object/);
  assert.match(parseMetadata("{nope").message, /not valid JSON/);
});
