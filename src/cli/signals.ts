// The daemon's signals, installed in one place: SIGHUP reloads, SIGTERM and SIGINT stop.

interface SignalHandlers {
  reload(): void
  stop(signal: 'SIGTERM' | 'SIGINT'): void
}

/** Install the handlers of SIGHUP, SIGTERM and SIGINT; the returned disposer removes all three. */
export function onSignals(handlers: SignalHandlers): () => void {
  const onHup = (): void => handlers.reload()
  const onTerm = (): void => handlers.stop('SIGTERM')
  const onInt = (): void => handlers.stop('SIGINT')
  process.on('SIGHUP', onHup)
  process.on('SIGTERM', onTerm)
  process.on('SIGINT', onInt)
  return () => {
    process.off('SIGTERM', onTerm)
    process.off('SIGINT', onInt)
    process.off('SIGHUP', onHup)
  }
}
