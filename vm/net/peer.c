/*
 * The kernel's side of the e1000e tests and benchmark: raw Ethernet frames
 * over AF_PACKET on one interface (run inside the network namespace that
 * holds the kernel-driven NIC). The frame format is vm/net/frames.ts's:
 *
 *   0 dst, 6 src, 12 ethertype 0x88b5 (IEEE local experimental),
 *   14 sequence (be32), 18 length of the whole frame (be16),
 *   20 CRC-32 of bytes 24..length (be32), 24.. bytes (seq * 7 + i) & 0xff
 *
 *   peer send IFACE DSTMAC COUNT MINLEN MAXLEN RATE
 *       lengths cycle MINLEN..MAXLEN; RATE frames per second on average (0: as
 *       fast as send() goes): frame i is due i / RATE seconds after the first
 *   peer recv IFACE COUNT IDLE_MS
 *       until COUNT frames or IDLE_MS without one; prints "ready" once bound
 *   peer ring IFACE
 *       sets the interface's descriptor rings to their maximum (ETHTOOL_SRINGPARAM)
 *
 * Each prints one JSON line of results. Linux only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE_TEST 0x88b5
#define HEADER 24
#define MAX_FRAME 1514
/*
 * A paced sender sleeps only when it is this early. Under TCG one
 * clock_nanosleep costs about a millisecond, so a sleep per frame would cap
 * any rate near 800 per second; frames that fall behind go back to back
 * until the sender is on time again.
 */
#define MIN_SLEEP 200e-6

static uint32_t crc_table[256];

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t
crc32(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void
die(const char *what)
{
	fprintf(stderr, "peer: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int
open_socket(const char *ifname, struct sockaddr_ll *sll, uint8_t mac[6])
{
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE_TEST));
	if (fd < 0)
		die("socket(AF_PACKET)");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
		die("SIOCGIFINDEX");
	memset(sll, 0, sizeof(*sll));
	sll->sll_family = AF_PACKET;
	sll->sll_protocol = htons(ETHERTYPE_TEST);
	sll->sll_ifindex = ifr.ifr_ifindex;
	sll->sll_halen = 6;
	if (bind(fd, (struct sockaddr *)sll, sizeof(*sll)) < 0)
		die("bind");
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		die("SIOCGIFHWADDR");
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	int size = 16 << 20;
	/* SO_RCVBUFFORCE: root may exceed rmem_max. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	return fd;
}

static int
parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

static size_t
build(uint8_t *f, const uint8_t dst[6], const uint8_t src[6], uint32_t seq, size_t len)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = ETHERTYPE_TEST >> 8;
	f[13] = ETHERTYPE_TEST & 0xff;
	uint32_t be = htonl(seq);
	memcpy(f + 14, &be, 4);
	f[18] = (uint8_t)(len >> 8);
	f[19] = (uint8_t)len;
	for (size_t i = HEADER; i < len; i++)
		f[i] = (uint8_t)(seq * 7 + i);
	uint32_t crc = htonl(crc32(f + HEADER, len - HEADER));
	memcpy(f + 20, &crc, 4);
	return len;
}

static int
do_send(const char *ifname, const char *dsts, long count, long minlen, long maxlen, double rate)
{
	struct sockaddr_ll sll;
	uint8_t src[6], dst[6], frame[MAX_FRAME];
	if (parse_mac(dsts, dst) < 0 || minlen < 60 || maxlen > MAX_FRAME || minlen > maxlen || !(rate >= 0)) {
		fprintf(stderr, "peer send: bad arguments\n");
		return 2;
	}
	int fd = open_socket(ifname, &sll, src);
	memcpy(sll.sll_addr, dst, 6);
	long span = maxlen - minlen + 1, retries = 0;
	double t0 = now(), c0 = cpu_seconds();
	for (long seq = 0; seq < count; seq++) {
		size_t len = build(frame, dst, src, (uint32_t)seq, (size_t)(minlen + seq % span));
		if (rate > 0) {
			/* Sleeping, not spinning: a spinning sender would take the vCPU the receiver runs on. */
			double due = t0 + seq / rate;
			if (due - now() >= MIN_SLEEP) {
				struct timespec ts = { .tv_sec = (time_t)due, .tv_nsec = (long)((due - (time_t)due) * 1e9) };
				while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
					;
			}
		}
		while (sendto(fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
			if (errno != ENOBUFS && errno != EAGAIN)
				die("sendto");
			retries++;
			usleep(50);
		}
	}
	double t = now() - t0, c = cpu_seconds() - c0;
	printf("{\"sent\":%ld,\"seconds\":%.6f,\"cpuSeconds\":%.6f,\"retries\":%ld}\n", count, t, c, retries);
	return 0;
}

/*
 * Each sequence number is accounted once: received (first time), duplicate
 * (again), reordered (first time, but after a higher one).
 */
static int
do_recv(const char *ifname, long count, long idle_ms)
{
	struct sockaddr_ll sll;
	uint8_t mac[6], frame[2048];
	int fd = open_socket(ifname, &sll, mac);
	uint8_t *seen = calloc((size_t)count, 1);
	long frames = 0, received = 0, bad = 0, reordered = 0, duplicates = 0, beyond = 0;
	long next = 0, first_bad = -1;
	double t0 = 0, tl = 0, c0 = cpu_seconds();
	if (seen == NULL)
		die("calloc");
	printf("ready\n");
	fflush(stdout);
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	while (received < count) {
		int r = poll(&pfd, 1, (int)idle_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("poll");
		if (r == 0)
			break;
		ssize_t n = recv(fd, frame, sizeof(frame), 0);
		if (n < 0)
			die("recv");
		if (t0 == 0)
			t0 = now();
		tl = now();
		frames++;
		uint32_t seq, crc;
		memcpy(&seq, frame + 14, 4);
		memcpy(&crc, frame + 20, 4);
		seq = ntohl(seq);
		size_t len = ((size_t)frame[18] << 8) | frame[19];
		if (n < HEADER || len != (size_t)n || ntohl(crc) != crc32(frame + HEADER, len - HEADER)) {
			if (first_bad < 0)
				first_bad = frames - 1;
			bad++;
			continue;
		}
		if ((long)seq >= count) {
			beyond++;
			continue;
		}
		if (seen[seq]) {
			duplicates++;
			continue;
		}
		seen[seq] = 1;
		received++;
		if ((long)seq < next)
			reordered++;
		else
			next = (long)seq + 1;
	}
	printf("{\"received\":%ld,\"frames\":%ld,\"bad\":%ld,\"firstBad\":%ld,\"duplicates\":%ld,\"reordered\":%ld,\"beyond\":%ld,\"seconds\":%.6f,\"cpuSeconds\":%.6f}\n",
	    received, frames, bad, first_bad, duplicates, reordered, beyond, tl - t0, cpu_seconds() - c0);
	return 0;
}

static int
do_ring(const char *ifname)
{
	struct ethtool_ringparam ring = { .cmd = ETHTOOL_GRINGPARAM };
	struct ifreq ifr;
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	ifr.ifr_data = (void *)&ring;
	if (ioctl(fd, SIOCETHTOOL, &ifr) < 0)
		die("ETHTOOL_GRINGPARAM");
	/* Already the largest (virtio_net: the queues are the device's size): nothing to set, and virtio_net
	 * refuses a resize without VIRTIO_F_RING_RESET. */
	if (ring.rx_pending == ring.rx_max_pending && ring.tx_pending == ring.tx_max_pending) {
		printf("{\"rx\":%u,\"tx\":%u}\n", ring.rx_pending, ring.tx_pending);
		return 0;
	}
	ring.cmd = ETHTOOL_SRINGPARAM;
	ring.rx_pending = ring.rx_max_pending;
	ring.tx_pending = ring.tx_max_pending;
	if (ioctl(fd, SIOCETHTOOL, &ifr) < 0)
		die("ETHTOOL_SRINGPARAM");
	printf("{\"rx\":%u,\"tx\":%u}\n", ring.rx_pending, ring.tx_pending);
	return 0;
}

int
main(int argc, char **argv)
{
	crc_init();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 8 && strcmp(argv[1], "send") == 0)
		return do_send(argv[2], argv[3], atol(argv[4]), atol(argv[5]), atol(argv[6]), atof(argv[7]));
	if (argc == 5 && strcmp(argv[1], "recv") == 0)
		return do_recv(argv[2], atol(argv[3]), atol(argv[4]));
	if (argc == 3 && strcmp(argv[1], "ring") == 0)
		return do_ring(argv[2]);
	fprintf(stderr, "usage: peer send IFACE DSTMAC COUNT MINLEN MAXLEN RATE | peer recv IFACE COUNT IDLE_MS | peer ring IFACE\n");
	return 2;
}
