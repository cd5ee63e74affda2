//! What operators run beside backups: monitoring plugins (freshness, usage against the soft
//! allocation) and Prometheus metrics.

pub mod metrics;
pub mod monitor;
