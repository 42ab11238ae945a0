/*-------------------------------------------------------------------------
 *
 * livekpi_tail.c
 *	  livekpi-tail: subscribe to a livekpi push listener from the command
 *	  line and print one JSON message per line (SPEC section 8).
 *
 * This file owns the command-line client: argument parsing, the hello,
 * printing, and with --follow reconnecting with jittered backoff and
 * resuming from the last seq seen (from a snapshot, delta or heartbeat).
 * It is a libwebsockets client and has nothing to do with the server
 * code in src/, which is built into livekpi.so.
 *
 * Exit codes: 0 normal end (--count reached, server closed normally),
 * 1 usage, 2 connection failed or lost, 3 token refused (4401),
 * 4 forbidden (4403), 5 message refused (1003, 1007, 1009), 6 other close,
 * 130 interrupted.  An "error" message is printed but never counts toward
 * --count: the refusal that follows decides the exit code, so
 * "--count 1" with a refused token does not exit 0.
 *
 * The hello is sent exactly once per connection: libwebsockets also calls
 * the writable callback after it answered the server's idle ping, and a
 * second hello is a protocol error (bad_message, close 1007).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/tail/livekpi_tail.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#define MAX_MESSAGE		(64 * 1024 * 1024)

static const char *opt_url = NULL;
static const char *opt_token = NULL;
static const char *opt_views = NULL;
static const char *opt_properties = NULL;
static const char *opt_from = NULL;
static const char *opt_to = NULL;
static long long opt_resume_from = -1;
static long opt_count = -1;
static bool opt_follow = false;
static bool opt_insecure = false;

static char url_copy[1024];
static const char *url_scheme;
static const char *url_host;
static const char *url_path;
static int	url_port;
static char path_buf[1024];

static volatile sig_atomic_t interrupted = 0;
static bool finished = false;
static bool connected = false;
static bool hello_sent = false;
static int	error_exit = 0;
static int	exit_code = 0;
static long printed = 0;
static long long last_seq = -1;
static char epoch[160] = "";

static char *rx = NULL;
static size_t rx_len = 0;
static size_t rx_cap = 0;

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: livekpi-tail --url ws://HOST:PORT/v1/stream --token lk_... [options]\n"
			"\n"
			"Prints every message of a livekpi stream as one JSON line.\n"
			"\n"
			"Options:\n"
			"  --url URL            ws:// or wss:// address of the stream\n"
			"  --token TOKEN        access token (or the LIVEKPI_TOKEN environment variable)\n"
			"  --views V1,V2        property_kpis, portfolio_kpis, expense_monthly, booking_daily\n"
			"  --properties P1,P2   narrow to these properties\n"
			"  --from DATE --to DATE  booking_daily range (YYYY-MM-DD)\n"
			"  --resume-from N      resume after batch N\n"
			"  --follow             reconnect (with backoff) and resume when the connection drops\n"
			"  --count N            exit after printing N messages\n"
			"  --insecure           accept any TLS certificate (self-signed)\n"
			"  --help               this text\n"
			"\n"
			"Exit codes: 0 done, 1 usage, 2 connection failed or lost, 3 token refused,\n"
			"4 forbidden, 5 message refused, 6 other close, 130 interrupted.\n");
}

static void
on_signal(int sig)
{
	(void) sig;
	interrupted = 1;
}

/* Append s as a JSON string (with quotes). */
static void
append_json_string(char *out, size_t outlen, const char *s)
{
	size_t		n = strlen(out);

	if (n + 2 >= outlen)
		return;
	out[n++] = '"';
	for (; *s && n + 8 < outlen; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
		{
			out[n++] = '\\';
			out[n++] = (char) c;
		}
		else if (c < 0x20)
			n += (size_t) snprintf(out + n, outlen - n, "\\u%04x", c);
		else
			out[n++] = (char) c;
	}
	out[n++] = '"';
	out[n] = '\0';
}

/* Append a comma list as a JSON array; all-digit items as numbers. */
static void
append_json_list(char *out, size_t outlen, const char *list)
{
	char		item[512];
	const char *p = list;
	bool		first = true;

	strncat(out, "[", outlen - strlen(out) - 1);
	while (*p)
	{
		const char *comma = strchr(p, ',');
		size_t		len = comma ? (size_t) (comma - p) : strlen(p);
		bool		numeric = len > 0;

		if (len >= sizeof(item))
			len = sizeof(item) - 1;
		memcpy(item, p, len);
		item[len] = '\0';
		for (size_t i = 0; i < len; i++)
			if (!(item[i] >= '0' && item[i] <= '9') && !(i == 0 && item[i] == '-'))
				numeric = false;
		if (!first)
			strncat(out, ",", outlen - strlen(out) - 1);
		if (numeric)
			strncat(out, item, outlen - strlen(out) - 1);
		else
			append_json_string(out, outlen, item);
		first = false;
		if (!comma)
			break;
		p = comma + 1;
	}
	strncat(out, "]", outlen - strlen(out) - 1);
}

static size_t
build_hello(char *out, size_t outlen)
{
	char		tmp[64];

	snprintf(out, outlen, "{\"type\":\"hello\",\"token\":");
	append_json_string(out, outlen, opt_token);
	if (opt_views)
	{
		strncat(out, ",\"views\":", outlen - strlen(out) - 1);
		append_json_list(out, outlen, opt_views);
	}
	if (opt_properties)
	{
		strncat(out, ",\"properties\":", outlen - strlen(out) - 1);
		append_json_list(out, outlen, opt_properties);
	}
	if (opt_from && opt_to)
	{
		strncat(out, ",\"daily_range\":{\"from\":", outlen - strlen(out) - 1);
		append_json_string(out, outlen, opt_from);
		strncat(out, ",\"to\":", outlen - strlen(out) - 1);
		append_json_string(out, outlen, opt_to);
		strncat(out, "}", outlen - strlen(out) - 1);
	}
	if (last_seq >= 0)
	{
		snprintf(tmp, sizeof(tmp), ",\"resume_from\":%lld", last_seq);
		strncat(out, tmp, outlen - strlen(out) - 1);
		if (epoch[0])
		{
			strncat(out, ",\"epoch\":", outlen - strlen(out) - 1);
			append_json_string(out, outlen, epoch);
		}
	}
	strncat(out, "}", outlen - strlen(out) - 1);
	return strlen(out);
}

/*
 * note_position
 *		Remember the seq (and epoch) a message carries, for --follow.  The
 *		server writes these members itself, unspaced, near the start.
 */
static void
note_position(const char *msg)
{
	const char *type = strstr(msg, "\"type\":\"");
	const char *seq;

	if (type == NULL)
		return;
	type += 8;
	if (strncmp(type, "welcome", 7) == 0)
	{
		const char *e = strstr(msg, "\"epoch\":\"");

		if (e)
		{
			size_t		len;

			e += 9;
			len = strcspn(e, "\"");
			if (len < sizeof(epoch))
			{
				memcpy(epoch, e, len);
				epoch[len] = '\0';
			}
		}
		return;
	}
	if (strncmp(type, "snapshot", 8) != 0 && strncmp(type, "delta", 5) != 0 &&
		strncmp(type, "heartbeat", 9) != 0)
		return;
	seq = strstr(msg, "\"seq\":");
	if (seq)
		last_seq = strtoll(seq + 6, NULL, 10);
}

static int
close_exit_code(int code)
{
	switch (code)
	{
		case 1000:
		case 1001:
			return 0;
		case 4401:
			return 3;
		case 4403:
			return 4;
		case 1003:
		case 1007:
		case 1009:
			return 5;
		default:
			return 6;
	}
}

/*
 * error_message_exit
 *		The exit code an "error" message stands for, or 0 when msg is not
 *		one.  Used when the connection ends without a close frame after it,
 *		and to keep error messages out of --count.
 */
static int
error_message_exit(const char *msg)
{
	static const char prefix[] = "{\"type\":\"error\"";
	const char *code;

	if (strncmp(msg, prefix, sizeof(prefix) - 1) != 0)
		return 0;
	code = strstr(msg, "\"code\":\"");
	if (code == NULL)
		return 6;
	code += 8;
	if (strncmp(code, "bad_token\"", 10) == 0 ||
		strncmp(code, "token_expired\"", 14) == 0 ||
		strncmp(code, "token_revoked\"", 14) == 0)
		return 3;
	if (strncmp(code, "forbidden_", 10) == 0)
		return 4;
	if (strncmp(code, "bad_message\"", 12) == 0 ||
		strncmp(code, "too_large\"", 10) == 0)
		return 5;
	return 6;
}

static int
callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
		 void *in, size_t len)
{
	(void) user;
	switch (reason)
	{
		case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
			fprintf(stderr, "livekpi-tail: could not connect to %s: %s\n", opt_url,
					in ? (const char *) in : "unknown error");
			exit_code = 2;
			finished = true;
			break;

		case LWS_CALLBACK_CLIENT_ESTABLISHED:
			connected = true;
			lws_callback_on_writable(wsi);
			break;

		case LWS_CALLBACK_CLIENT_WRITEABLE:
			{
				static unsigned char buf[LWS_PRE + 8192];
				size_t		n;

				/* also called after lws answered a ping: hello only once */
				if (hello_sent)
					break;
				n = build_hello((char *) buf + LWS_PRE, sizeof(buf) - LWS_PRE);
				if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < (int) n)
					return -1;
				hello_sent = true;
				break;
			}

		case LWS_CALLBACK_CLIENT_RECEIVE:
			if (rx_len + len + 1 > rx_cap)
			{
				size_t		ncap = rx_cap ? rx_cap * 2 : 65536;

				while (ncap < rx_len + len + 1)
					ncap *= 2;
				if (ncap > MAX_MESSAGE)
				{
					fprintf(stderr, "livekpi-tail: message too large\n");
					exit_code = 2;
					finished = true;
					return -1;
				}
				rx = realloc(rx, ncap);
				if (rx == NULL)
				{
					fprintf(stderr, "livekpi-tail: out of memory\n");
					exit(2);
				}
				rx_cap = ncap;
			}
			memcpy(rx + rx_len, in, len);
			rx_len += len;
			if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
				break;
			rx[rx_len] = '\0';
			fwrite(rx, 1, rx_len, stdout);
			fputc('\n', stdout);
			fflush(stdout);
			note_position(rx);
			rx_len = 0;
			{
				int			e = error_message_exit(rx);

				if (e != 0)
				{
					/* a refusal follows; it decides, not --count */
					error_exit = e;
					if (e >= 3 && e <= 5)
						opt_follow = false;
					break;
				}
			}
			printed++;
			if (opt_count >= 0 && printed >= opt_count)
			{
				exit_code = 0;
				finished = true;
				opt_follow = false;
				lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
				return -1;
			}
			break;

		case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
			{
				int			code = len >= 2 ? (((unsigned char *) in)[0] << 8) | ((unsigned char *) in)[1] : 1005;

				fprintf(stderr, "livekpi-tail: server closed the connection (%d%s%.*s)\n",
						code, len > 2 ? ": " : "", len > 2 ? (int) len - 2 : 0,
						len > 2 ? (const char *) in + 2 : "");
				exit_code = close_exit_code(code);
				/* refusals are final even with --follow */
				if (exit_code >= 3 && exit_code <= 5)
					opt_follow = false;
				break;
			}

		case LWS_CALLBACK_CLIENT_CLOSED:
			if (exit_code == 0 && error_exit != 0)
				exit_code = error_exit;
			else if (exit_code == 0 && !(opt_count >= 0 && printed >= opt_count))
				exit_code = 2;
			finished = true;
			break;

		default:
			break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{"livekpi.v1", callback, 0, 65536, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

static int
run_once(struct lws_context *ctx)
{
	struct lws_client_connect_info ci;

	memset(&ci, 0, sizeof(ci));
	ci.context = ctx;
	ci.address = url_host;
	ci.port = url_port;
	ci.path = path_buf;
	ci.host = url_host;
	ci.origin = NULL;
	ci.protocol = "livekpi.v1";
	if (strcmp(url_scheme, "wss") == 0 || strcmp(url_scheme, "https") == 0)
	{
		ci.ssl_connection = LCCSCF_USE_SSL;
		if (opt_insecure)
			ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
				LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
	}
	finished = false;
	connected = false;
	hello_sent = false;
	error_exit = 0;
	exit_code = 0;
	rx_len = 0;
	if (lws_client_connect_via_info(&ci) == NULL)
	{
		fprintf(stderr, "livekpi-tail: could not start connecting to %s\n", opt_url);
		return 2;
	}
	while (!finished && !interrupted)
		lws_service(ctx, 0);
	return exit_code;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},
		{"token", required_argument, NULL, 't'},
		{"views", required_argument, NULL, 'v'},
		{"properties", required_argument, NULL, 'p'},
		{"from", required_argument, NULL, 'f'},
		{"to", required_argument, NULL, 'T'},
		{"resume-from", required_argument, NULL, 'r'},
		{"count", required_argument, NULL, 'c'},
		{"follow", no_argument, NULL, 'F'},
		{"insecure", no_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	struct lws_context_creation_info info;
	struct lws_context *ctx;
	int			opt;
	int			rc;
	unsigned	backoff_ms = 500;

	while ((opt = getopt_long(argc, argv, "u:t:v:p:f:T:r:c:Fkh", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'u':
				opt_url = optarg;
				break;
			case 't':
				opt_token = optarg;
				break;
			case 'v':
				opt_views = optarg;
				break;
			case 'p':
				opt_properties = optarg;
				break;
			case 'f':
				opt_from = optarg;
				break;
			case 'T':
				opt_to = optarg;
				break;
			case 'r':
				opt_resume_from = strtoll(optarg, NULL, 10);
				break;
			case 'c':
				opt_count = strtol(optarg, NULL, 10);
				break;
			case 'F':
				opt_follow = true;
				break;
			case 'k':
				opt_insecure = true;
				break;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return 1;
		}
	}
	if (opt_token == NULL)
		opt_token = getenv("LIVEKPI_TOKEN");
	if (opt_url == NULL || opt_token == NULL || optind < argc)
	{
		fprintf(stderr, "livekpi-tail: --url and --token are required\n");
		usage(stderr);
		return 1;
	}
	if ((opt_from == NULL) != (opt_to == NULL))
	{
		fprintf(stderr, "livekpi-tail: --from and --to go together\n");
		return 1;
	}
	last_seq = opt_resume_from;

	snprintf(url_copy, sizeof(url_copy), "%s", opt_url);
	if (lws_parse_uri(url_copy, &url_scheme, &url_host, &url_port, &url_path) != 0 ||
		(strcmp(url_scheme, "ws") != 0 && strcmp(url_scheme, "wss") != 0))
	{
		fprintf(stderr, "livekpi-tail: not a ws:// or wss:// address: %s\n", opt_url);
		return 1;
	}
	snprintf(path_buf, sizeof(path_buf), "/%s", url_path);

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	lws_set_log_level(LLL_ERR, NULL);

	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.gid = -1;
	info.uid = -1;
	ctx = lws_create_context(&info);
	if (ctx == NULL)
	{
		fprintf(stderr, "livekpi-tail: could not initialise libwebsockets\n");
		return 2;
	}
	srand((unsigned) time(NULL) ^ (unsigned) getpid());

	for (;;)
	{
		rc = run_once(ctx);
		if (interrupted || !opt_follow)
			break;
		if (connected)
			backoff_ms = 500;
		{
			unsigned	wait = backoff_ms / 2 + (unsigned) rand() % (backoff_ms / 2 + 1);

			fprintf(stderr, "livekpi-tail: reconnecting in %u ms\n", wait);
			usleep(wait * 1000);
		}
		if (backoff_ms < 30000)
			backoff_ms *= 2;
	}
	lws_context_destroy(ctx);
	return interrupted ? 130 : rc;
}
