// Polling a screen's data while the screen is open (Status, Workers and queue).

/**
 * Calls `load(signal)` now and again `ms` after each call ends, until the returned function is
 * called (a screen's unmount). `signal` aborts the request under way then; `load` checks
 * `signal.aborted` after awaiting before it draws. A failure goes to `onError`, and polling goes on.
 */
export function poll(ms, load, onError) {
  let timer = 0;
  const controller = new AbortController();
  async function tick() {
    try {
      await load(controller.signal);
    } catch (error) {
      if (!controller.signal.aborted && error.name !== "AbortError") onError(error);
    }
    if (!controller.signal.aborted) timer = setTimeout(tick, ms);
  }
  tick();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}
