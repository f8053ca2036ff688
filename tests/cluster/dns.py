#!/usr/bin/env python3
"""Cluster DNS records for the test cluster, served by a real DNS server.

CoreDNS (what a real cluster runs) is not packaged in Debian bookworm and no
registry is reachable, so the test cluster's name service is Debian's
dnsmasq, answering on the control plane's bridge address (the `clusterDNS` of
every kubelet). This script is the part of CoreDNS's `kubernetes` plugin that
dnsmasq lacks: it reads Services and Endpoints from the API server once a
second and writes them as a hosts file dnsmasq serves, then tells dnsmasq to
reload (SIGHUP) when something changed:

  <service>.<namespace>.svc.cluster.local             -> the ClusterIP, or for a
                                                         headless service every
                                                         ready endpoint address
  <hostname>.<service>.<namespace>.svc.cluster.local  -> that endpoint (the
                                                         stable names of a
                                                         StatefulSet's pods)

usage: dns.py API_URL CA_FILE TOKEN HOSTS_FILE DNSMASQ_PID_FILE
"""
import json
import os
import signal
import ssl
import sys
import time
import urllib.request

DOMAIN = "svc.cluster.local"


def get(api, ctx, token, path):
    req = urllib.request.Request(api + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)["items"]


def records(services, endpoints):
    """Maps each name to its sorted addresses."""
    names = {}

    def add(name, ip):
        names.setdefault(name, set()).add(ip)

    by_key = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        fqdn = f"{name}.{ns}.{DOMAIN}"
        cluster_ip = svc["spec"].get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            add(fqdn, cluster_ip)
            continue
        for subset in (by_key.get((ns, name)) or {}).get("subsets") or []:
            for addr in subset.get("addresses") or []:
                add(fqdn, addr["ip"])
                if addr.get("hostname"):
                    add(f"{addr['hostname']}.{fqdn}", addr["ip"])
    return {n: sorted(ips) for n, ips in names.items()}


def hosts_text(names):
    lines = [f"{ip} {name}" for name in sorted(names) for ip in names[name]]
    return "\n".join(lines) + "\n"


def main():
    api, ca, token, hosts, pid_file = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca)
    last = None
    while True:
        try:
            text = hosts_text(records(
                get(api, ctx, token, "/api/v1/services"),
                get(api, ctx, token, "/api/v1/endpoints"),
            ))
        except Exception as err:  # the API server restarting: try again next second
            print(f"dns.py: reading services failed: {err}", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        if text != last:
            tmp = hosts + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, hosts)
            try:
                with open(pid_file) as f:
                    os.kill(int(f.read().strip()), signal.SIGHUP)
            except (OSError, ValueError) as err:
                print(f"dns.py: cannot signal dnsmasq: {err}", file=sys.stderr, flush=True)
            print(f"dns.py: {text.count(chr(10))} records", flush=True)
            last = text
        time.sleep(1)


if __name__ == "__main__":
    main()
