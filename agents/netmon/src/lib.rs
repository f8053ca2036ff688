//! The node network agent: conntrack or eBPF flow counting, DNS tracing, pod enrichment, flushed to the appliance as Arrow batches.
