-- Per-GiB network rates by traffic class and cloud provider, from the providers' public list
-- prices (first pricing tier, US regions) as of `as_of`. A flow's cost is
-- tx_bytes / 2^30 * usd_per_gib_tx + rx_bytes / 2^30 * usd_per_gib_rx: TX leaves the source
-- pod, RX comes back to it. Where a provider bills both sides of a boundary (AWS cross-AZ:
-- 0.01 USD/GB out plus 0.01 USD/GB in), the rate is the sum. To override a rate, change its row.
SELECT * FROM (VALUES
  ('aws',   'same_zone',         0.0,   0.0,   DATE '2025-01-01', 'same-AZ traffic over private IPs is free'),
  ('aws',   'cross_zone',        0.02,  0.02,  DATE '2025-01-01', 'EC2 data transfer between AZs: 0.01 USD/GB each way, billed on both sides'),
  ('aws',   'cross_region',      0.02,  0.02,  DATE '2025-01-01', 'EC2 inter-region data transfer out (US regions)'),
  ('aws',   'internet_egress',   0.09,  0.0,   DATE '2025-01-01', 'EC2 data transfer out to the internet, first 10 TB/month; inbound is free'),
  ('aws',   'private_link',      0.01,  0.01,  DATE '2025-01-01', 'PrivateLink interface endpoint data processed'),
  ('aws',   'k8s_control_plane', 0.01,  0.01,  DATE '2025-01-01', 'EKS control plane ENIs: cross-AZ rate, as they sit in other AZs'),
  ('aws',   'cloud_api',         0.045, 0.045, DATE '2025-01-01', 'NAT gateway data processed (public AWS endpoints without a VPC endpoint)'),
  ('aws',   'load_balancer',     0.01,  0.01,  DATE '2025-01-01', 'internal load balancer: cross-AZ rate to its nodes'),
  ('aws',   'private_network',   0.01,  0.01,  DATE '2025-01-01', 'other VPC addresses: cross-AZ rate'),
  ('aws',   'in_cluster',        0.0,   0.0,   DATE '2025-01-01', 'in-cluster destination whose zone is unknown'),
  ('gcp',   'same_zone',         0.0,   0.0,   DATE '2025-01-01', 'same-zone traffic over internal IPs is free'),
  ('gcp',   'cross_zone',        0.01,  0.01,  DATE '2025-01-01', 'VM-to-VM egress between zones of a region'),
  ('gcp',   'cross_region',      0.02,  0.02,  DATE '2025-01-01', 'VM-to-VM egress between regions within North America'),
  ('gcp',   'internet_egress',   0.12,  0.0,   DATE '2025-01-01', 'Premium Tier internet egress, first TiB/month'),
  ('gcp',   'private_link',      0.01,  0.01,  DATE '2025-01-01', 'Private Service Connect data processed'),
  ('gcp',   'k8s_control_plane', 0.0,   0.0,   DATE '2025-01-01', 'GKE control plane traffic is not billed'),
  ('gcp',   'cloud_api',         0.045, 0.045, DATE '2025-01-01', 'Cloud NAT data processed'),
  ('gcp',   'load_balancer',     0.01,  0.01,  DATE '2025-01-01', 'internal load balancer data processed'),
  ('gcp',   'private_network',   0.01,  0.01,  DATE '2025-01-01', 'other VPC addresses: cross-zone rate'),
  ('gcp',   'in_cluster',        0.0,   0.0,   DATE '2025-01-01', 'in-cluster destination whose zone is unknown'),
  ('azure', 'same_zone',         0.0,   0.0,   DATE '2025-01-01', 'same-zone traffic is free'),
  ('azure', 'cross_zone',        0.0,   0.0,   DATE '2025-01-01', 'Azure does not bill traffic between availability zones'),
  ('azure', 'cross_region',      0.02,  0.0,   DATE '2025-01-01', 'inter-region transfer within North America, outbound'),
  ('azure', 'internet_egress',   0.087, 0.0,   DATE '2025-01-01', 'internet egress, first 10 TB/month (after 100 GB free)'),
  ('azure', 'private_link',      0.01,  0.01,  DATE '2025-01-01', 'Private Link inbound and outbound data processed'),
  ('azure', 'k8s_control_plane', 0.0,   0.0,   DATE '2025-01-01', 'AKS control plane traffic is not billed'),
  ('azure', 'cloud_api',         0.045, 0.045, DATE '2025-01-01', 'NAT gateway data processed'),
  ('azure', 'load_balancer',     0.005, 0.005, DATE '2025-01-01', 'Standard Load Balancer data processed'),
  ('azure', 'private_network',   0.0,   0.0,   DATE '2025-01-01', 'other VNet addresses in the region'),
  ('azure', 'in_cluster',        0.0,   0.0,   DATE '2025-01-01', 'in-cluster destination whose zone is unknown')
) AS rates(provider, class, usd_per_gib_tx, usd_per_gib_rx, as_of, note)
ORDER BY provider, class
