//! Tally's analyses: rightsizing, replicas, node consolidation, instance types and cost allocation, run over the store with the queries in queries/.
