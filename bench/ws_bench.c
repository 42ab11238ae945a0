/*-------------------------------------------------------------------------
 *
 * ws_bench.c
 *	  A WebSocket benchmark client for the livekpi push worker: one
 *	  process, one libwebsockets event loop, many connections.
 *
 * This file owns the client side of the push benchmarks that
 * bench/push_bench.sh runs (SPEC section 9: commit-to-receive latency,
 * fan-out, push throughput).  It opens --clients plain ws connections
 * (at most --inflight handshakes at a time), sends each a hello with the
 * token, waits until every one has its snapshot, then writes --ready-file.
 * From then on it records, for every delta received, the receive time
 * (CLOCK_REALTIME, when the last fragment arrived) minus the delta's
 * committed_at (both UTC, the same host clock); with --dump it also
 * writes "committed_us received_us seq" for each of them, so the caller
 * can match every transaction's own commit time to the delta that carried
 * it (committed_at is the newest commit of a batch).
 *
 * SIGUSR1 ends a round: the seq written in --target-file is read, and
 * once every live client has seen that seq (from a delta or a heartbeat),
 * or --drain-timeout seconds passed, one line of JSON with the statistics
 * so far is appended to --out (stdout when absent).  Without --hold the
 * program then exits; with --hold the connections stay open for the next
 * round (samples accumulate) until SIGTERM, so the caller can measure the
 * server while they are connected.
 *
 * Nothing here is part of the extension; it is built by push_bench.sh
 * with cc -O2 ... -lwebsockets.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * bench/ws_bench.c
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#define HEAD_SIZE		512		/* bytes kept of each message's beginning */
#define SUBPROTOCOL		"livekpi.v1"

typedef enum
{
	CS_IDLE,					/* not started */
	CS_CONNECTING,				/* handshake or hello in flight */
	CS_LIVE,					/* snapshot received */
	CS_GONE						/* failed or closed */
} ClientState;

typedef struct BenchClient
{
	struct lws *wsi;
	ClientState state;
	bool		hello_sent;		/* lws may call WRITEABLE more than once */
	int64_t		seq;			/* newest seq seen (snapshot, delta, heartbeat) */
	size_t		headlen;		/* bytes in head of the current message */
	char		head[HEAD_SIZE];
} BenchClient;

/* options */
static const char *opt_host = "127.0.0.1";
static int	opt_port = 8089;
static const char *opt_token = NULL;
static const char *opt_hello_extra = NULL;	/* more hello members */
static int	opt_clients = 1;
static int	opt_inflight = 200;
static const char *opt_ready_file = NULL;
static const char *opt_target_file = NULL;
static const char *opt_out = NULL;
static double opt_drain_timeout = 20.0;
static double opt_connect_timeout = 120.0;
static bool opt_record = true;
static bool opt_hold = false;
static FILE *dumpf = NULL;		/* --dump: one line per recorded delta */

/* state */
static BenchClient *clients;
static int	next_client = 0;
static int	n_connecting = 0;
static int	n_live = 0;
static int	n_failed = 0;
static int	n_closed_live = 0;	/* live clients the server closed */
static int	n_errors = 0;		/* error messages received */
static char first_error[256] = "";
static bool ready = false;
static double t_start;
static double t_ready;

static int64_t *samples = NULL;	/* latencies in microseconds */
static size_t nsamples = 0;
static size_t samples_cap = 0;
static int64_t n_deltas = 0;
static int64_t n_messages = 0;
static int64_t n_bytes = 0;
static double first_delta_at = 0;
static double last_delta_at = 0;

static volatile sig_atomic_t got_usr1 = false;
static volatile sig_atomic_t got_term = false;
static bool draining = false;
static int64_t target_seq = -1;
static double drain_deadline = 0;
static bool finished = false;

static struct lws_context *ctx;
static lws_sorted_usec_list_t tick_sul;

static double
now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t
now_real_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * parse_rfc3339_us
 *		"2026-01-05T10:00:00.123456+00:00" (any number of fraction digits,
 *		any offset) to microseconds since the epoch; -1 if unparsable.
 */
static int64_t
parse_rfc3339_us(const char *s)
{
	struct tm	tm;
	int			frac_us = 0;
	int			scale = 100000;
	int64_t		secs;
	const char *p;

	memset(&tm, 0, sizeof(tm));
	p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (p == NULL)
		return -1;
	if (*p == '.')
	{
		p++;
		while (*p >= '0' && *p <= '9')
		{
			frac_us += (*p - '0') * scale;
			scale /= 10;
			p++;
		}
	}
	secs = (int64_t) timegm(&tm);
	if (*p == '+' || *p == '-')
	{
		int			sign = *p == '-' ? -1 : 1;
		int			hh = 0,
					mm = 0;

		if (sscanf(p + 1, "%2d:%2d", &hh, &mm) >= 1)
			secs -= sign * (hh * 3600 + mm * 60);
	}
	return secs * 1000000 + frac_us;
}

/* "key": value as an int64; false when absent */
static bool
json_int(const char *s, const char *key, int64_t *out)
{
	const char *p = strstr(s, key);

	if (p == NULL)
		return false;
	p += strlen(key);
	*out = strtoll(p, NULL, 10);
	return true;
}

static void
add_sample(int64_t us)
{
	if (nsamples == samples_cap)
	{
		samples_cap = samples_cap ? samples_cap * 2 : 65536;
		samples = realloc(samples, samples_cap * sizeof(int64_t));
		if (samples == NULL)
		{
			fprintf(stderr, "ws_bench: out of memory\n");
			exit(1);
		}
	}
	samples[nsamples++] = us;
}

/*
 * on_message
 *		A complete message (of which head holds the beginning) arrived.
 */
static void
on_message(BenchClient *c, int64_t recv_us)
{
	const char *h = c->head;
	int64_t		seq = -1;

	n_messages++;
	if (strncmp(h, "{\"type\":\"delta\"", 15) == 0)
	{
		const char *ca = strstr(h, "\"committed_at\":\"");

		n_deltas++;
		if (json_int(h, "\"seq\":", &seq) && seq > c->seq)
			c->seq = seq;
		last_delta_at = now_mono();
		if (first_delta_at == 0)
			first_delta_at = last_delta_at;
		if (opt_record && ready && ca != NULL)
		{
			int64_t		commit_us = parse_rfc3339_us(ca + 16);

			if (commit_us > 0)
			{
				add_sample(recv_us - commit_us);
				if (dumpf)
					fprintf(dumpf, "%lld %lld %lld\n", (long long) commit_us,
							(long long) recv_us, (long long) seq);
			}
		}
	}
	else if (strncmp(h, "{\"type\":\"heartbeat\"", 19) == 0)
	{
		if (json_int(h, "\"seq\":", &seq) && seq > c->seq)
			c->seq = seq;
	}
	else if (strncmp(h, "{\"type\":\"snapshot\"", 18) == 0)
	{
		if (json_int(h, "\"seq\":", &seq) && seq > c->seq)
			c->seq = seq;
		if (c->state == CS_CONNECTING)
		{
			c->state = CS_LIVE;
			n_connecting--;
			n_live++;
		}
	}
	else if (strncmp(h, "{\"type\":\"error\"", 15) == 0)
	{
		if (n_errors++ == 0)
			snprintf(first_error, sizeof(first_error), "%.200s", h);
	}
	/* welcome and resync: nothing to do */
}

static void
client_gone(BenchClient *c)
{
	if (c->state == CS_CONNECTING)
	{
		n_connecting--;
		n_failed++;
	}
	else if (c->state == CS_LIVE)
	{
		n_live--;
		n_closed_live++;
	}
	c->state = CS_GONE;
	c->wsi = NULL;
}

static int
callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
		 void *in, size_t len)
{
	BenchClient *c = (BenchClient *) lws_get_opaque_user_data(wsi);

	(void) user;
	switch (reason)
	{
		case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
			if (c)
			{
				if (n_failed == 0 && first_error[0] == '\0')
					snprintf(first_error, sizeof(first_error), "connect: %s",
							 in ? (const char *) in : "unknown error");
				client_gone(c);
			}
			break;

		case LWS_CALLBACK_CLIENT_ESTABLISHED:
			lws_callback_on_writable(wsi);
			break;

		case LWS_CALLBACK_CLIENT_WRITEABLE:
			{
				unsigned char buf[LWS_PRE + 1024];
				int			n;

				if (c == NULL || c->hello_sent)
					break;
				c->hello_sent = true;
				n = snprintf((char *) buf + LWS_PRE, sizeof(buf) - LWS_PRE,
							 "{\"type\":\"hello\",\"token\":\"%s\"%s%s}", opt_token,
							 opt_hello_extra ? "," : "", opt_hello_extra ? opt_hello_extra : "");
				if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < n)
					return -1;
				break;
			}

		case LWS_CALLBACK_CLIENT_RECEIVE:
			if (c == NULL)
				break;
			n_bytes += len;
			if (c->headlen < HEAD_SIZE - 1)
			{
				size_t		take = len;

				if (take > HEAD_SIZE - 1 - c->headlen)
					take = HEAD_SIZE - 1 - c->headlen;
				memcpy(c->head + c->headlen, in, take);
				c->headlen += take;
			}
			if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
				break;
			c->head[c->headlen] = '\0';
			on_message(c, now_real_us());
			c->headlen = 0;
			break;

		case LWS_CALLBACK_CLIENT_CLOSED:
			if (c)
				client_gone(c);
			break;

		default:
			break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{SUBPROTOCOL, callback, 0, 65536, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

static void
start_client(BenchClient *c)
{
	struct lws_client_connect_info ci;
	char		host[128];

	snprintf(host, sizeof(host), "%s:%d", opt_host, opt_port);
	memset(&ci, 0, sizeof(ci));
	ci.context = ctx;
	ci.address = opt_host;
	ci.port = opt_port;
	ci.path = "/v1/stream";
	ci.host = host;
	ci.protocol = SUBPROTOCOL;
	ci.opaque_user_data = c;
	ci.pwsi = &c->wsi;
	c->state = CS_CONNECTING;
	c->seq = -1;
	c->hello_sent = false;
	c->headlen = 0;
	n_connecting++;
	if (lws_client_connect_via_info(&ci) == NULL && c->state == CS_CONNECTING)
		client_gone(c);
}

static void
write_file_atomic(const char *path, const char *text)
{
	char		tmp[4096];
	FILE	   *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (f == NULL || fputs(text, f) == EOF || fclose(f) != 0 || rename(tmp, path) != 0)
	{
		fprintf(stderr, "ws_bench: could not write %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

static int
cmp_int64(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a;
	int64_t		y = *(const int64_t *) b;

	return x < y ? -1 : x > y;
}

/* nearest-rank percentile, in ms */
static double
pct_ms(double p)
{
	size_t		k;

	if (nsamples == 0)
		return -1;
	k = (size_t) (p * nsamples + 0.999999);
	if (k < 1)
		k = 1;
	if (k > nsamples)
		k = nsamples;
	return samples[k - 1] / 1000.0;
}

static void
report(bool drained)
{
	char		line[2048];
	int			reached = 0;
	double		span;

	for (int i = 0; i < opt_clients; i++)
		if (clients[i].state == CS_LIVE && clients[i].seq >= target_seq)
			reached++;
	qsort(samples, nsamples, sizeof(int64_t), cmp_int64);
	span = last_delta_at > first_delta_at ? last_delta_at - first_delta_at : 0;
	snprintf(line, sizeof(line),
			 "{\"clients\":%d,\"live\":%d,\"failed\":%d,\"closed\":%d,\"errors\":%d,"
			 "\"connect_s\":%.3f,\"target_seq\":%lld,\"reached\":%d,\"drained\":%s,"
			 "\"n\":%zu,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
			 "\"min_ms\":%.3f,\"deltas\":%lld,\"messages\":%lld,\"bytes\":%lld,"
			 "\"delta_span_s\":%.3f,\"first_error\":\"%s\"}\n",
			 opt_clients, n_live, n_failed, n_closed_live, n_errors,
			 t_ready - t_start, (long long) target_seq, reached,
			 drained ? "true" : "false",
			 nsamples, pct_ms(0.50), pct_ms(0.90), pct_ms(0.99),
			 nsamples ? samples[nsamples - 1] / 1000.0 : -1,
			 nsamples ? samples[0] / 1000.0 : -1,
			 (long long) n_deltas, (long long) n_messages, (long long) n_bytes,
			 span, "");
	/* the first error, JSON-escaped crudely: quotes and backslashes dropped */
	if (first_error[0])
	{
		char		esc[256];
		size_t		j = 0;
		char	   *tail = strstr(line, "\"first_error\":\"\"}");

		for (size_t i = 0; first_error[i] && j < sizeof(esc) - 1; i++)
			if (first_error[i] != '"' && first_error[i] != '\\' &&
				(unsigned char) first_error[i] >= 0x20)
				esc[j++] = first_error[i];
		esc[j] = '\0';
		if (tail)
			snprintf(tail, sizeof(line) - (tail - line),
					 "\"first_error\":\"%s\"}\n", esc);
	}
	if (dumpf)
		fflush(dumpf);
	if (opt_out)
	{
		FILE	   *f = fopen(opt_out, "a");

		if (f == NULL || fputs(line, f) == EOF || fclose(f) != 0)
		{
			fprintf(stderr, "ws_bench: could not write %s: %s\n", opt_out, strerror(errno));
			exit(1);
		}
	}
	else
	{
		fputs(line, stdout);
		fflush(stdout);
	}
}

static bool
all_reached(void)
{
	for (int i = 0; i < opt_clients; i++)
		if (clients[i].state == CS_LIVE && clients[i].seq < target_seq)
			return false;
	return true;
}

/*
 * step
 *		Between two lws_service() calls and on every tick: start more
 *		connections, notice readiness, handle the signals.
 */
static void
step(void)
{
	double		now = now_mono();

	while (next_client < opt_clients && n_connecting < opt_inflight)
		start_client(&clients[next_client++]);

	if (!ready && next_client == opt_clients && n_connecting == 0)
	{
		char		buf[256];

		ready = true;
		t_ready = now;
		snprintf(buf, sizeof(buf),
				 "{\"live\":%d,\"failed\":%d,\"connect_s\":%.3f}\n",
				 n_live, n_failed, t_ready - t_start);
		if (opt_ready_file)
			write_file_atomic(opt_ready_file, buf);
	}
	if (!ready && now - t_start > opt_connect_timeout)
	{
		fprintf(stderr, "ws_bench: connect timeout: %d live, %d failed, %d connecting\n",
				n_live, n_failed, n_connecting);
		exit(1);
	}

	if (got_usr1 && !draining)
	{
		draining = true;
		drain_deadline = now + opt_drain_timeout;
		if (opt_target_file)
		{
			FILE	   *f = fopen(opt_target_file, "r");
			long long	v;

			if (f && fscanf(f, "%lld", &v) == 1)
				target_seq = v;
			if (f)
				fclose(f);
		}
	}
	if (draining && !finished)
	{
		bool		done = all_reached();

		if (done || now > drain_deadline)
		{
			report(done);
			if (opt_hold)
			{
				/* ready for the next round; the samples accumulate */
				draining = false;
				got_usr1 = false;
			}
			else
			{
				finished = true;
				got_term = true;
			}
		}
	}
}

static void
tick_cb(lws_sorted_usec_list_t *sul)
{
	(void) sul;
	step();
	lws_sul_schedule(ctx, 0, &tick_sul, tick_cb, 10 * LWS_US_PER_MS);
}

static void
on_usr1(int sig)
{
	(void) sig;
	got_usr1 = true;
}

static void
on_term(int sig)
{
	(void) sig;
	got_term = true;
}

static void
raise_fd_limit(int need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t) need)
	{
		struct rlimit want = {need, need};

		/* root may raise the hard limit */
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		fprintf(stderr, "ws_bench: setrlimit: %s\n", strerror(errno));
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t) need)
		fprintf(stderr, "ws_bench: open-files limit %ld < %d needed\n",
				(long) rl.rlim_cur, need);
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: ws_bench --port P --token T [--host H] [--clients N] [--inflight N]\n"
			"                [--ready-file F] [--target-file F] [--out F]\n"
			"                [--drain-timeout S] [--connect-timeout S] [--no-record] [--hold]\n"
			"                [--dump F] [--hello-extra '\"views\":[...],...']\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"host", required_argument, NULL, 'h'},
		{"port", required_argument, NULL, 'p'},
		{"token", required_argument, NULL, 't'},
		{"clients", required_argument, NULL, 'c'},
		{"inflight", required_argument, NULL, 'i'},
		{"ready-file", required_argument, NULL, 'r'},
		{"target-file", required_argument, NULL, 'g'},
		{"out", required_argument, NULL, 'o'},
		{"drain-timeout", required_argument, NULL, 'd'},
		{"connect-timeout", required_argument, NULL, 'C'},
		{"no-record", no_argument, NULL, 'n'},
		{"hold", no_argument, NULL, 'H'},
		{"dump", required_argument, NULL, 'D'},
		{"hello-extra", required_argument, NULL, 'x'},
		{NULL, 0, NULL, 0}
	};
	struct lws_context_creation_info info;
	struct sigaction sa;
	int			ch;

	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (ch)
		{
			case 'h':
				opt_host = optarg;
				break;
			case 'p':
				opt_port = atoi(optarg);
				break;
			case 't':
				opt_token = optarg;
				break;
			case 'c':
				opt_clients = atoi(optarg);
				break;
			case 'i':
				opt_inflight = atoi(optarg);
				break;
			case 'r':
				opt_ready_file = optarg;
				break;
			case 'g':
				opt_target_file = optarg;
				break;
			case 'o':
				opt_out = optarg;
				break;
			case 'd':
				opt_drain_timeout = atof(optarg);
				break;
			case 'C':
				opt_connect_timeout = atof(optarg);
				break;
			case 'n':
				opt_record = false;
				break;
			case 'H':
				opt_hold = true;
				break;
			case 'x':
				opt_hello_extra = optarg;
				break;
			case 'D':
				dumpf = fopen(optarg, "w");
				if (dumpf == NULL)
				{
					fprintf(stderr, "ws_bench: %s: %s\n", optarg, strerror(errno));
					return 1;
				}
				break;
			default:
				usage();
		}
	}
	if (opt_token == NULL || opt_clients < 1 || opt_inflight < 1 || opt_port <= 0 ||
		strlen(opt_token) > 128 ||
		(opt_hello_extra && strlen(opt_hello_extra) > 800))
		usage();

	clients = calloc(opt_clients, sizeof(BenchClient));
	if (clients == NULL)
	{
		fprintf(stderr, "ws_bench: out of memory\n");
		return 1;
	}
	/* before lws_create_context: lws sizes its fd table from the limit */
	raise_fd_limit(opt_clients + 256);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	lws_set_log_level(LLL_ERR, NULL);
	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	ctx = lws_create_context(&info);
	if (ctx == NULL)
	{
		fprintf(stderr, "ws_bench: lws_create_context failed\n");
		return 1;
	}

	t_start = now_mono();
	lws_sul_schedule(ctx, 0, &tick_sul, tick_cb, 1);
	while (!got_term)
	{
		if (lws_service(ctx, 0) < 0)
			break;
		step();
	}
	if (!finished && !opt_hold)
		report(all_reached());
	/* no graceful close of thousands of sockets: the kernel closes them */
	_exit(0);
}
