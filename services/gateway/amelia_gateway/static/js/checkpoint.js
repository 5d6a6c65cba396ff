// A thread's checkpoints (ThreadState from GetThreadState / ListThreadHistory) in words, as the
// Threads screen's State and History show them. Pure (no DOM): unit-tested with node.

const SOURCE_WORDS = { input: "input", loop: "node", update: "edit", fork: "fork" };

/** LangGraph's `metadata.source` as a word: input, node (a node ran), edit (UpdateThreadState), fork. */
export function sourceOf(state) {
  const source = state && state.metadata ? state.metadata.source : "";
  return SOURCE_WORDS[source] || String(source || "?");
}

/**
 * The nodes that wrote `state`: its parent checkpoint's tasks that finished (their update is
 * set). `byId` maps checkpoint ids to states already loaded; an unknown parent gives [].
 */
export function writersOf(state, byId) {
  const parent = state && state.parentCheckpoint ? byId.get(state.parentCheckpoint) : null;
  if (!parent) return [];
  return (parent.tasks || []).filter((task) => task.update !== undefined && task.update !== null).map((task) => task.node);
}

/** "draft → approve": who wrote the checkpoint (when known) and what runs next ("end": nothing). */
export function flowOf(state, byId) {
  const writers = writersOf(state, byId);
  const next = (state && state.next) || [];
  const after = next.length ? next.join(", ") : "end";
  return writers.length ? `${writers.join(", ")} → ${after}` : `→ ${after}`;
}

/** The questions waiting at a checkpoint, as text (a `{question}` object gives its question). */
export function questionsOf(state) {
  return ((state && state.interrupts) || []).map(({ value }) => {
    if (value && typeof value === "object" && typeof value.question === "string") return value.question;
    return typeof value === "string" ? value : JSON.stringify(value);
  });
}

/**
 * The state's `messages` as a conversation, [{role, text}], or null when the state has none
 * (or they are not role/content messages). Content given as parts keeps their text.
 */
export function conversationOf(values) {
  const messages = values && values.messages;
  if (!Array.isArray(messages) || !messages.length) return null;
  if (!messages.every((m) => m && typeof m === "object" && ("role" in m || "type" in m))) return null;
  return messages.map((m) => ({ role: String(m.role || m.type), text: textOf(m.content) }));
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (part && typeof part === "object" && typeof part.text === "string" ? part.text : JSON.stringify(part))).join("");
  }
  return content === undefined || content === null ? "" : JSON.stringify(content);
}

/**
 * The edit form's JSON as the request's `values`: an object, or an Error saying what is wrong
 * (the service checks the keys and reducers).
 */
export function parseValues(text) {
  let value;
  try {
    value = JSON.parse(text.trim() || "{}");
  } catch (error) {
    return new Error(`The values are not valid JSON: ${error.message}`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return new Error("The values must be a JSON object, such as {\"key\": \"value\"}.");
  if (!Object.keys(value).length) return new Error("The values are empty: name at least one key of the state.");
  return value;
}
