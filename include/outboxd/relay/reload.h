/*
 * Configuration reload on SIGHUP (README "Reloading the configuration").
 *
 * The main thread calls outboxd_reload_start when SIGHUP arrived: the file is
 * read and validated again exactly as at start (loader, preflight, a trial
 * router per source). An invalid file is logged as one ERROR
 * ("FILE:LINE: key: reason") and nothing changes. A valid one has the keys
 * marked restart in config.c set back to their running values (a WARN per
 * change: "needs a restart"), the process-wide settings (log level and
 * format, metrics thresholds) applied at once, and is handed to every
 * running source, which switches at its next transaction boundary
 * (source.h). outboxd_reload_poll, called periodically, frees configurations
 * no source reads any more and says when every source has applied the last
 * reload.
 *
 * The reloader owns every configuration it loaded; the one given to
 * outboxd_reload_new stays the caller's and must outlive the reloader.
 */
#ifndef OUTBOXD_RELOAD_H
#define OUTBOXD_RELOAD_H

#include <stdbool.h>
#include <stddef.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/metrics.h"
#include "outboxd/relay/source.h"

typedef struct outboxd_reload outboxd_reload_t;

/* initial: the configuration the sources were started with (sources[i] of the
 * caller runs initial->sources[i]). cli_log_level and cli_log_format: the
 * command line's --log-level and --log-format (NULL: not given); they win
 * over the file on every reload. NULL on OOM. */
outboxd_reload_t *outboxd_reload_new(const outboxd_config_t *initial, const char *cli_log_level,
                                     const char *cli_log_format);

/* Frees every configuration the reloader loaded: call after every source is
 * destroyed. */
void outboxd_reload_destroy(outboxd_reload_t *r);

/* Reads the file again and hands a valid configuration to sources[0..n-1]
 * (NULL entries are skipped). notify: tell systemd (RELOADING=1, and READY=1
 * at once when the file is refused). Returns true when the new configuration
 * was handed over. */
bool outboxd_reload_start(outboxd_reload_t *r, outboxd_source_t *const *sources, size_t n,
                          outboxd_metrics_t *metrics, bool notify);

/* The newest valid configuration (the first one until a reload was handed
 * over). Valid until the next outboxd_reload_start or _poll. */
const outboxd_config_t *outboxd_reload_latest(const outboxd_reload_t *r);

/* Frees configurations no source uses any more. Returns true once per
 * handed-over reload, when every running source has applied it. */
bool outboxd_reload_poll(outboxd_reload_t *r, outboxd_source_t *const *sources, size_t n);

#endif
