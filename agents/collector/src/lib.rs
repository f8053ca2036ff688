//! The collector agent: watches workloads, pods, nodes and events with kube informers, scrapes kubelet usage, and sends Arrow batches to the appliance.
