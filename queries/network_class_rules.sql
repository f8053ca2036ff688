-- The traffic class rules: which class a destination that is no pod or node of the cluster
-- belongs to. One row per rule; the lowest `priority` that matches wins, so specific rules
-- (a VPC endpoint's domain) come before general ones (any *.amazonaws.com).
--
--   match_on 'domain': `pattern` is a SQL LIKE pattern on the domain DNS tracing saw for the
--                      address (`%` is any run of characters);
--   match_on 'ip':     `pattern` is a regular expression on the address as text.
--
-- A destination matching no rule is `internet_egress`. Destinations inside the cluster are
-- classified before these rules by zone and region: same_zone, cross_zone, cross_region.
-- To add a rule, add a row (and a case to queries/src/golden_network.rs); every network view
-- reads this table, and network_rates.sql prices each class.
SELECT * FROM (VALUES
  (5,   'k8s_service',      'domain', '%.svc.cluster.local',                  'in_cluster',        'a Service of the cluster (its ClusterIP; which endpoint and zone answered is not known)'),
  (10,  'imds',             'ip',     '^169\.254\.169\.254\b',                 'cloud_api',         'the cloud metadata service (AWS, GCP, Azure)'),
  (11,  'imds_ipv6',        'ip',     '^fd00:ec2::254\b',                      'cloud_api',         'the AWS metadata service over IPv6'),
  (20,  'aws_vpce',         'domain', 'vpce-%.vpce-svc-%.%.vpce.amazonaws.com', 'private_link',    'an AWS PrivateLink interface endpoint'),
  (21,  'azure_privatelink','domain', '%.privatelink.%.azure.com',            'private_link',      'an Azure Private Link endpoint'),
  (30,  'eks',              'domain', '%.eks.amazonaws.com',                  'k8s_control_plane', 'the EKS API server'),
  (31,  'aks',              'domain', '%.azmk8s.io',                          'k8s_control_plane', 'the AKS API server'),
  (32,  'gke',              'domain', '%.gke.googleapis.com',                 'k8s_control_plane', 'the GKE API server'),
  (40,  'aws_internal_elb', 'domain', 'internal-%.elb.amazonaws.com',         'load_balancer',     'an internal AWS load balancer'),
  (50,  'aws_api',          'domain', '%.amazonaws.com',                      'cloud_api',         'AWS service APIs (S3, STS, ECR, …)'),
  (51,  'gcp_api',          'domain', '%.googleapis.com',                     'cloud_api',         'Google Cloud APIs'),
  (52,  'azure_key_vault',  'domain', '%.vault.azure.net',                    'cloud_api',         'Azure Key Vault'),
  (90,  'rfc1918_10',       'ip',     '^10\.',                                'private_network',   'a private address outside the cluster (VPC, peering, VPN)'),
  (91,  'rfc1918_172',      'ip',     '^172\.(1[6-9]|2[0-9]|3[01])\.',        'private_network',   'a private address outside the cluster'),
  (92,  'rfc1918_192',      'ip',     '^192\.168\.',                          'private_network',   'a private address outside the cluster'),
  (93,  'cgnat',            'ip',     '^100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.', 'private_network', 'shared address space (100.64.0.0/10)'),
  (94,  'ipv6_ula',         'ip',     '^f[cd][0-9a-f]{2}:',                   'private_network',   'an IPv6 unique local address (fc00::/7)')
) AS rules(priority, rule, match_on, pattern, class, note)
ORDER BY priority
