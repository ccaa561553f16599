//! The ordered event log and watcher fan-out (filled by the watch issue).
