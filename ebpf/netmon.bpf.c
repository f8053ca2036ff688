// Tally netmon: per-flow byte and packet counters and DNS response capture, as cgroup_skb
// programs. Built by agents/netmon/build.rs with clang (-target bpf -g -O2) against the
// kernel's UAPI headers only (no CO-RE needed: cgroup_skb sees the stable __sk_buff and the
// packet bytes), loaded and attached by the agent with aya.
//
// A flow is keyed from the point of view of the cgroup's sockets: local address, remote
// address, remote port, protocol. Egress packets count as TX, ingress packets as RX, with
// skb->len bytes (the IP packet, headers included: the same bytes conntrack counts).
// Counters only grow; userspace turns them into per-window deltas and deletes idle keys.
// The map is an LRU hash, so memory is fixed whatever the traffic.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DNS_PORT 53
// The largest DNS payload copied (a power of two, for the verifier's bounds); longer
// responses are cut and userspace rejects them as truncated.
#define DNS_MAX 2048

struct flow_key {
	__u8 local[16];   // IPv4: the first 4 bytes, the rest zero
	__u8 remote[16];
	__u16 remote_port; // host byte order; 0 for protocols without ports
	__u8 family;       // 4 or 6
	__u8 protocol;     // IPPROTO_*
};

struct flow_counters {
	__u64 tx_bytes;
	__u64 tx_packets;
	__u64 rx_bytes;
	__u64 rx_packets;
};

struct dns_event {
	__u32 len;        // bytes of data used
	__u8 family;      // 4 or 6
	__u8 pad[3];
	__u8 client[16];  // the local address the response was sent to
	__u8 data[DNS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_counters);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} dns_events SEC(".maps");

// Set by the loader: count flows (eBPF mode), capture DNS responses (both modes).
volatile const __u8 count_flows = 1;
volatile const __u8 trace_dns = 1;

struct parsed {
	struct flow_key key;
	__u32 l4_offset; // where the TCP/UDP header starts; 0 when there is none
};

static __always_inline int parse(struct __sk_buff *skb, int egress, struct parsed *p)
{
	__u8 *local = p->key.local, *remote = p->key.remote;
	__u16 ports[2] = {0, 0};

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return -1;
		p->key.family = 4;
		p->key.protocol = ip.protocol;
		__builtin_memcpy(local, egress ? &ip.saddr : &ip.daddr, 4);
		__builtin_memcpy(remote, egress ? &ip.daddr : &ip.saddr, 4);
		// Only the first fragment carries ports.
		if (ip.frag_off & bpf_htons(0x1fff))
			return 0;
		p->l4_offset = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return -1;
		p->key.family = 6;
		p->key.protocol = ip6.nexthdr;
		__builtin_memcpy(local, egress ? &ip6.saddr : &ip6.daddr, 16);
		__builtin_memcpy(remote, egress ? &ip6.daddr : &ip6.saddr, 16);
		p->l4_offset = sizeof(ip6);
	} else {
		return -1;
	}
	if (p->key.protocol == IPPROTO_TCP || p->key.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, p->l4_offset, ports, sizeof(ports)) < 0)
			return 0;
		// ports[0] is the packet's source port, ports[1] its destination port.
		p->key.remote_port = bpf_ntohs(egress ? ports[1] : ports[0]);
	} else {
		p->l4_offset = 0;
	}
	return 0;
}

static __always_inline void count(struct __sk_buff *skb, struct flow_key *key, int egress)
{
	struct flow_counters *c = bpf_map_lookup_elem(&flows, key);
	if (!c) {
		struct flow_counters zero = {};
		bpf_map_update_elem(&flows, key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&flows, key);
		if (!c)
			return;
	}
	if (egress) {
		__sync_fetch_and_add(&c->tx_bytes, skb->len);
		__sync_fetch_and_add(&c->tx_packets, 1);
	} else {
		__sync_fetch_and_add(&c->rx_bytes, skb->len);
		__sync_fetch_and_add(&c->rx_packets, 1);
	}
}

static __always_inline void capture_dns(struct __sk_buff *skb, struct parsed *p)
{
	if (p->key.protocol != IPPROTO_UDP || p->key.remote_port != DNS_PORT || !p->l4_offset)
		return;
	__u32 offset = p->l4_offset + sizeof(struct udphdr);
	if (skb->len <= offset)
		return;
	__u32 n = skb->len - offset;
	if (n > DNS_MAX)
		n = DNS_MAX;
	struct dns_event *e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
	if (!e)
		return;
	e->family = p->key.family;
	__builtin_memcpy(e->client, p->key.local, 16);
	// n is in [1, DNS_MAX]; the verifier must see that too, so the length is written as
	// ((n - 1) & (DNS_MAX - 1)) + 1 (equal to n), behind a barrier clang cannot see through.
	asm volatile("" : "+r"(n));
	__u32 len = ((n - 1) & (DNS_MAX - 1)) + 1;
	e->len = 0;
	if (bpf_skb_load_bytes(skb, offset, e->data, len) == 0)
		e->len = len;
	bpf_ringbuf_submit(e, 0);
}

SEC("cgroup_skb/egress")
int netmon_egress(struct __sk_buff *skb)
{
	struct parsed p = {};
	if (count_flows && parse(skb, 1, &p) == 0)
		count(skb, &p.key, 1);
	return 1;
}

SEC("cgroup_skb/ingress")
int netmon_ingress(struct __sk_buff *skb)
{
	struct parsed p = {};
	if (parse(skb, 0, &p) != 0)
		return 1;
	if (count_flows)
		count(skb, &p.key, 0);
	if (trace_dns)
		capture_dns(skb, &p);
	return 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
