/**
 * The environment a server process runs in (glibc's malloc settings; read when the process starts, so `tsight serve`
 * starts itself again with these when they are not set, and the test runner gives them to its workers).
 * - A fixed mmap threshold: glibc raises it as big blocks are freed and then keeps freed memory of middling size;
 *   fixed, what a job's large tensors took goes back to the system once they are collected.
 * - Two arenas: each thread that allocates may get an arena of its own (up to 8 per core), and the jobs of a
 *   model run on several (its worker, isolated-vm's, ONNX Runtime's). Small blocks freed in one arena stay with it:
 *   the hostile suite's job that fills its memory with 4 KB tensors left 70 MB more resident than the same job
 *   before it had, on another thread's arena; with two, 0-14 MB.
 */
export const SERVE_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: "131072", MALLOC_TRIM_THRESHOLD_: "131072", MALLOC_ARENA_MAX: "2" };

/**
 * What a server started by `tsight serve` (which starts it again in a child process, see SERVE_ENV) sends its parent
 * over their IPC channel to be started again: a model of it is failed until the process restarts (its jobs broke too
 * many worker threads, which keep what they held). The parent starts it anew once it has ended, however it ends (its
 * watchdog may have to kill it: a lost thread can keep it from ending).
 */
export const RESTART_MESSAGE = { tsight: "restart" } as const;
