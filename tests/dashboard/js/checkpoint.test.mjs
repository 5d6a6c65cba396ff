// Unit tests of js/checkpoint.js: a thread's checkpoints in words (the Threads screen's State and History).
import assert from "node:assert/strict";
import { test } from "node:test";

const STATIC = new URL("../../../services/gateway/amelia_gateway/static/js/", import.meta.url);
const { conversationOf, flowOf, parseValues, questionsOf, sourceOf, writersOf } = await import(new URL("checkpoint.js", STATIC));

const first = { checkpoint: "c1", parentCheckpoint: "", next: ["draft"], metadata: { source: "input" },
  tasks: [{ node: "draft", update: { plan: "x" } }] };
const second = { checkpoint: "c2", parentCheckpoint: "c1", next: ["approve"], metadata: { source: "loop" },
  tasks: [{ node: "approve", update: null }] };
const edited = { checkpoint: "c3", parentCheckpoint: "c2", next: [], metadata: { source: "update" } };
const byId = new Map([first, second, edited].map((s) => [s.checkpoint, s]));

test("a checkpoint's source reads as a word", () => {
  assert.equal(sourceOf(first), "input");
  assert.equal(sourceOf(second), "node");
  assert.equal(sourceOf(edited), "edit");
  assert.equal(sourceOf({ metadata: { source: "fork" } }), "fork");
  assert.equal(sourceOf({}), "?");
});

test("who wrote a checkpoint comes from its parent's finished tasks", () => {
  assert.deepEqual(writersOf(second, byId), ["draft"]);
  assert.deepEqual(writersOf(edited, byId), []); // approve had not finished
  assert.deepEqual(writersOf(first, byId), []);
  assert.equal(flowOf(second, byId), "draft → approve");
  assert.equal(flowOf(first, byId), "→ draft");
  assert.equal(flowOf(edited, byId), "→ end");
  assert.equal(flowOf({ parentCheckpoint: "unknown", next: ["a", "b"] }, byId), "→ a, b");
});

test("waiting questions as text", () => {
  assert.deepEqual(questionsOf({ interrupts: [{ value: { question: "Go?", options: ["yes"] } }, { value: "plain" }, { value: [1] }] }),
    ["Go?", "plain", "[1]"]);
  assert.deepEqual(questionsOf({}), []);
});

test("messages in the state read as a conversation", () => {
  assert.deepEqual(conversationOf({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: [{ type: "text", text: "he" }, { text: "llo" }] }] }),
    [{ role: "user", text: "hi" }, { role: "assistant", text: "hello" }]);
  assert.deepEqual(conversationOf({ messages: [{ type: "human", content: null }] }), [{ role: "human", text: "" }]);
  assert.equal(conversationOf({ messages: [] }), null);
  assert.equal(conversationOf({ messages: ["just text"] }), null);
  assert.equal(conversationOf({ result: "x" }), null);
  assert.equal(conversationOf(undefined), null);
});

test("the edit form's values must be a non-empty JSON object", () => {
  assert.deepEqual(parseValues(' {"messages": [{"role": "user", "content": "x"}]} '), { messages: [{ role: "user", content: "x" }] });
  assert.match(parseValues("{oops").message, /^The values are not valid JSON/);
  assert.match(parseValues("[1]").message, /must be a JSON object/);
  assert.match(parseValues("null").message, /must be a JSON object/);
  assert.match(parseValues("").message, /are empty/);
  assert.match(parseValues("{}").message, /are empty/);
});
