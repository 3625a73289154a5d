// Imported first (ESM evaluates imports in order, before the importing
// module's body): tests signal other processes a lot, and a stray SIGUSR1
// must never start Node's inspector, not even while the server's own
// dependencies are still loading.
process.on('SIGUSR1', () => {});
