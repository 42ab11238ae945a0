/*-------------------------------------------------------------------------
 *
 * protocol.c
 *	  Parser for the client messages of protocol v1 (SPEC section 7):
 *	  "hello" and "subscribe".
 *
 * This file owns the grammar of what a client may send.  It is a small,
 * strict JSON reader specialised to one object with known members: it
 * uses no memory but the caller's LkClientMessage, never throws, bounds
 * nesting depth, and reports the first problem as a short message meant
 * for the client (it becomes the "message" of a bad_message error).  The
 * push worker calls it from inside libwebsockets callbacks; the fuzz
 * target in test/fuzz/ links it alone.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/protocol.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <string.h>

#include "protocol.h"

const char *const lk_view_names[LK_NUM_VIEWS] = {
	"property_kpis",
	"portfolio_kpis",
	"expense_monthly",
	"booking_daily"
};

typedef struct Parser
{
	const char *p;
	const char *end;
	char	   *errbuf;
	size_t		errlen;
	bool		failed;
} Parser;

/*
 * fail
 *		Record the first error; later ones are consequences of it.
 */
static bool
fail(Parser *ps, const char *msg)
{
	if (!ps->failed)
	{
		ps->failed = true;
		snprintf(ps->errbuf, ps->errlen, "%s", msg);
	}
	return false;
}

static void
skip_ws(Parser *ps)
{
	while (ps->p < ps->end &&
		   (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static bool
expect(Parser *ps, char c)
{
	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != c)
	{
		char		msg[64];

		snprintf(msg, sizeof(msg), "invalid JSON: expected '%c'", c);
		return fail(ps, msg);
	}
	ps->p++;
	return true;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool
read_hex4(Parser *ps, unsigned *out)
{
	unsigned	v = 0;

	if (ps->end - ps->p < 4)
		return fail(ps, "invalid JSON: truncated \\u escape");
	for (int i = 0; i < 4; i++)
	{
		int			h = hexval(ps->p[i]);

		if (h < 0)
			return fail(ps, "invalid JSON: bad \\u escape");
		v = (v << 4) | (unsigned) h;
	}
	ps->p += 4;
	*out = v;
	return true;
}

/*
 * put_byte
 *		Append to a bounded output; out == NULL means "skip the value".
 */
static bool
put_byte(Parser *ps, char *out, size_t outsize, size_t *n, char c,
		 const char *toolong)
{
	if (out == NULL)
		return true;
	if (*n + 1 >= outsize)
		return toolong ? fail(ps, toolong) : true;	/* NULL: truncate */
	out[(*n)++] = c;
	return true;
}

/*
 * parse_string
 *		Read a JSON string into out (NUL-terminated, at most outsize - 1
 *		bytes), decoding escapes to UTF-8.  out may be NULL to skip; a
 *		NULL toolong truncates silently instead of failing.
 *		Raw control characters and lone surrogates are rejected; other
 *		UTF-8 validity is enforced by the listener (LWS_SERVER_OPTION_
 *		VALIDATE_UTF8).
 */
static bool
parse_string(Parser *ps, char *out, size_t outsize, size_t *outlen,
			 const char *toolong)
{
	size_t		n = 0;

	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != '"')
		return fail(ps, "invalid JSON: expected a string");
	ps->p++;
	for (;;)
	{
		unsigned char c;

		if (ps->p >= ps->end)
			return fail(ps, "invalid JSON: unterminated string");
		c = (unsigned char) *ps->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return fail(ps, "invalid JSON: control character in string");
		if (c != '\\')
		{
			if (!put_byte(ps, out, outsize, &n, (char) c, toolong))
				return false;
			continue;
		}
		if (ps->p >= ps->end)
			return fail(ps, "invalid JSON: unterminated string");
		c = (unsigned char) *ps->p++;
		switch (c)
		{
			case '"':
			case '\\':
			case '/':
				break;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			case 'u':
				{
					unsigned	cp;
					char		utf[4];
					int			len;

					if (!read_hex4(ps, &cp))
						return false;
					if (cp >= 0xD800 && cp <= 0xDBFF)
					{
						unsigned	lo;

						if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
							return fail(ps, "invalid JSON: lone surrogate");
						ps->p += 2;
						if (!read_hex4(ps, &lo))
							return false;
						if (lo < 0xDC00 || lo > 0xDFFF)
							return fail(ps, "invalid JSON: lone surrogate");
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					}
					else if (cp >= 0xDC00 && cp <= 0xDFFF)
						return fail(ps, "invalid JSON: lone surrogate");
					if (cp == 0)
						return fail(ps, "invalid JSON: \\u0000 is not allowed");
					if (cp < 0x80)
					{
						utf[0] = (char) cp;
						len = 1;
					}
					else if (cp < 0x800)
					{
						utf[0] = (char) (0xC0 | (cp >> 6));
						utf[1] = (char) (0x80 | (cp & 0x3F));
						len = 2;
					}
					else if (cp < 0x10000)
					{
						utf[0] = (char) (0xE0 | (cp >> 12));
						utf[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
						utf[2] = (char) (0x80 | (cp & 0x3F));
						len = 3;
					}
					else
					{
						utf[0] = (char) (0xF0 | (cp >> 18));
						utf[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
						utf[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
						utf[3] = (char) (0x80 | (cp & 0x3F));
						len = 4;
					}
					for (int i = 0; i < len; i++)
						if (!put_byte(ps, out, outsize, &n, utf[i], toolong))
							return false;
					continue;
				}
			default:
				return fail(ps, "invalid JSON: bad escape in string");
		}
		if (!put_byte(ps, out, outsize, &n, (char) c, toolong))
			return false;
	}
	if (out != NULL)
		out[n] = '\0';
	if (outlen)
		*outlen = n;
	return true;
}

/*
 * parse_number
 *		Read a JSON number.  When want_int is set, only an integer that
 *		fits int64 is accepted and stored in *ival; its text goes to out
 *		(if not NULL).
 */
static bool
parse_number(Parser *ps, bool want_int, int64_t *ival, char *out, size_t outsize)
{
	const char *start;
	bool		is_int = true;
	bool		neg = false;
	uint64_t	v = 0;
	bool		overflow = false;

	skip_ws(ps);
	start = ps->p;
	if (ps->p < ps->end && *ps->p == '-')
	{
		neg = true;
		ps->p++;
	}
	if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
		return fail(ps, "invalid JSON: bad number");
	if (*ps->p == '0' && ps->p + 1 < ps->end && ps->p[1] >= '0' && ps->p[1] <= '9')
		return fail(ps, "invalid JSON: leading zero in number");
	while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
	{
		unsigned	d = (unsigned) (*ps->p - '0');

		if (v > (UINT64_MAX - d) / 10)
			overflow = true;
		else
			v = v * 10 + d;
		ps->p++;
	}
	if (ps->p < ps->end && *ps->p == '.')
	{
		is_int = false;
		ps->p++;
		if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
			return fail(ps, "invalid JSON: bad number");
		while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
			ps->p++;
	}
	if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E'))
	{
		is_int = false;
		ps->p++;
		if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
			ps->p++;
		if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
			return fail(ps, "invalid JSON: bad number");
		while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
			ps->p++;
	}
	if (!want_int)
		return true;
	if (!is_int)
		return fail(ps, "expected an integer");
	if (overflow || (!neg && v > (uint64_t) INT64_MAX) ||
		(neg && v > (uint64_t) INT64_MAX + 1))
		return fail(ps, "integer out of range");
	if (ival)
		*ival = neg ? (int64_t) (0 - v) : (int64_t) v;
	if (out)
	{
		size_t		len = (size_t) (ps->p - start);

		if (len + 1 > outsize)
			return fail(ps, "integer too long");
		memcpy(out, start, len);
		out[len] = '\0';
	}
	return true;
}

static bool skip_value(Parser *ps, int depth);

static bool
match_literal(Parser *ps, const char *lit)
{
	size_t		len = strlen(lit);

	if ((size_t) (ps->end - ps->p) < len || memcmp(ps->p, lit, len) != 0)
		return fail(ps, "invalid JSON: unexpected token");
	ps->p += len;
	return true;
}

/*
 * skip_value
 *		Validate and skip any JSON value (members we do not know), with a
 *		depth bound so that "[[[[..." cannot exhaust the stack.
 */
static bool
skip_value(Parser *ps, int depth)
{
	if (depth > LK_MAX_DEPTH)
		return fail(ps, "invalid JSON: nested too deeply");
	skip_ws(ps);
	if (ps->p >= ps->end)
		return fail(ps, "invalid JSON: unexpected end of input");
	switch (*ps->p)
	{
		case '"':
			return parse_string(ps, NULL, 0, NULL, NULL);
		case '{':
			ps->p++;
			skip_ws(ps);
			if (ps->p < ps->end && *ps->p == '}')
			{
				ps->p++;
				return true;
			}
			for (;;)
			{
				if (!parse_string(ps, NULL, 0, NULL, NULL) ||
					!expect(ps, ':') ||
					!skip_value(ps, depth + 1))
					return false;
				skip_ws(ps);
				if (ps->p < ps->end && *ps->p == ',')
				{
					ps->p++;
					continue;
				}
				return expect(ps, '}');
			}
		case '[':
			ps->p++;
			skip_ws(ps);
			if (ps->p < ps->end && *ps->p == ']')
			{
				ps->p++;
				return true;
			}
			for (;;)
			{
				if (!skip_value(ps, depth + 1))
					return false;
				skip_ws(ps);
				if (ps->p < ps->end && *ps->p == ',')
				{
					ps->p++;
					continue;
				}
				return expect(ps, ']');
			}
		case 't':
			return match_literal(ps, "true");
		case 'f':
			return match_literal(ps, "false");
		case 'n':
			return match_literal(ps, "null");
		default:
			return parse_number(ps, false, NULL, NULL, 0);
	}
}

static bool
peek_null(Parser *ps)
{
	skip_ws(ps);
	if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0)
	{
		ps->p += 4;
		return true;
	}
	return false;
}

/*
 * lk_view_from_name
 *		The LK_VIEW_* bit of a view name, or 0 when unknown.
 */
int
lk_view_from_name(const char *name, size_t len)
{
	for (int i = 0; i < LK_NUM_VIEWS; i++)
		if (strlen(lk_view_names[i]) == len && memcmp(lk_view_names[i], name, len) == 0)
			return 1 << i;
	return 0;
}

static bool
parse_views(Parser *ps, LkClientMessage *msg)
{
	msg->views = 0;
	if (!expect(ps, '['))
		return false;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == ']')
	{
		ps->p++;
		return fail(ps, "\"views\" must not be empty");
	}
	for (;;)
	{
		char		name[64];
		size_t		len;
		int			bit;

		if (!parse_string(ps, name, sizeof(name), &len, "unknown view"))
			return false;
		bit = lk_view_from_name(name, len);
		if (bit == 0)
		{
			char		m[128];

			snprintf(m, sizeof(m), "unknown view \"%s\"", name);
			return fail(ps, m);
		}
		msg->views |= (uint32_t) bit;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',')
		{
			ps->p++;
			continue;
		}
		return expect(ps, ']');
	}
}

static bool
parse_properties(Parser *ps, LkClientMessage *msg)
{
	size_t		used = 0;

	msg->nproperties = 0;
	if (!expect(ps, '['))
		return false;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == ']')
	{
		ps->p++;
		return true;
	}
	for (;;)
	{
		char	   *dst = msg->propbuf + used;
		size_t		room = sizeof(msg->propbuf) - used;
		size_t		len;
		bool		isnum;

		if (msg->nproperties >= LK_MAX_PROPERTIES)
			return fail(ps, "too many properties");
		if (room > LK_MAX_PROPERTY_LEN + 1)
			room = LK_MAX_PROPERTY_LEN + 1;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == '"')
		{
			isnum = false;
			if (!parse_string(ps, dst, room, &len, "property key too long"))
				return false;
		}
		else if (ps->p < ps->end && (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')))
		{
			isnum = true;
			if (!parse_number(ps, true, NULL, dst, room))
				return false;
			len = strlen(dst);
		}
		else
			return fail(ps, "\"properties\" must be an array of numbers or strings");
		msg->property_off[msg->nproperties] = (int) used;
		msg->property_is_number[msg->nproperties] = isnum;
		msg->nproperties++;
		used += len + 1;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',')
		{
			ps->p++;
			continue;
		}
		return expect(ps, ']');
	}
}

/*
 * valid_date_text
 *		A real calendar date written YYYY-MM-DD (year 1 to 9999), so that
 *		the worker's cast to date cannot fail.
 */
static bool
valid_date_text(const char *s, size_t len)
{
	static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int			year,
				month,
				day;
	bool		leap;

	if (len != 10 || s[4] != '-' || s[7] != '-')
		return false;
	for (int i = 0; i < 10; i++)
		if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
			return false;
	year = ((s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0'));
	month = (s[5] - '0') * 10 + (s[6] - '0');
	day = (s[8] - '0') * 10 + (s[9] - '0');
	if (year < 1 || month < 1 || month > 12 || day < 1)
		return false;
	leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	return day <= mdays[month - 1] + (month == 2 && leap ? 1 : 0);
}

static bool
parse_daily_range(Parser *ps, LkClientMessage *msg)
{
	bool		have_from = false,
				have_to = false;

	if (!expect(ps, '{'))
		return false;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == '}')
	{
		ps->p++;
		return fail(ps, "\"daily_range\" needs \"from\" and \"to\"");
	}
	for (;;)
	{
		char		key[16];
		char		val[16];
		size_t		klen,
					vlen;

		if (!parse_string(ps, key, sizeof(key), &klen, "unknown member of \"daily_range\"") ||
			!expect(ps, ':'))
			return false;
		if (strcmp(key, "from") == 0 || strcmp(key, "to") == 0)
		{
			bool		isfrom = (key[0] == 'f');

			if (!parse_string(ps, val, sizeof(val), &vlen, "dates must be YYYY-MM-DD"))
				return false;
			if (!valid_date_text(val, vlen))
				return fail(ps, "dates must be YYYY-MM-DD");
			memcpy(isfrom ? msg->daily_from : msg->daily_to, val, 11);
			if (isfrom)
				have_from = true;
			else
				have_to = true;
		}
		else if (!skip_value(ps, 2))
			return false;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',')
		{
			ps->p++;
			continue;
		}
		if (!expect(ps, '}'))
			return false;
		break;
	}
	if (!have_from || !have_to)
		return fail(ps, "\"daily_range\" needs \"from\" and \"to\"");
	if (strcmp(msg->daily_from, msg->daily_to) > 0)
		return fail(ps, "\"daily_range\": \"from\" is after \"to\"");
	return true;
}

/*
 * lk_parse_client_message
 *		Parse one client message.  Returns false with a message for the
 *		client in errbuf when the message is not a well-formed hello or
 *		subscribe.  Unknown members are ignored, so that newer clients can
 *		talk to this server; "type" must be present.  Scope checks that
 *		need the database (token, key type) are the worker's.
 */
bool
lk_parse_client_message(const char *buf, size_t len, LkClientMessage *msg,
						char *errbuf, size_t errlen)
{
	Parser		ps;
	bool		have_type = false;

	ps.p = buf;
	ps.end = buf + len;
	ps.errbuf = errbuf;
	ps.errlen = errlen;
	ps.failed = false;
	if (errlen > 0)
		errbuf[0] = '\0';

	msg->type = LK_MSG_HELLO;
	msg->has_token = false;
	msg->token[0] = '\0';
	msg->has_views = false;
	msg->views = 0;
	msg->has_properties = false;
	msg->nproperties = 0;
	msg->has_daily_range = false;
	msg->daily_from[0] = msg->daily_to[0] = '\0';
	msg->has_resume_from = false;
	msg->resume_from = 0;
	msg->has_epoch = false;
	msg->epoch[0] = '\0';

	if (len > LK_MAX_MESSAGE)
		return fail(&ps, "message too large");
	if (!expect(&ps, '{'))
		return fail(&ps, "a message must be a JSON object");
	skip_ws(&ps);
	if (ps.p < ps.end && *ps.p == '}')
		ps.p++;
	else
	{
		for (;;)
		{
			char		key[32];
			size_t		klen;

			/* names we know are short: a truncated long one matches none */
			if (!parse_string(&ps, key, sizeof(key), &klen, NULL))
				return false;
			if (!expect(&ps, ':'))
				return false;

			if (strcmp(key, "type") == 0)
			{
				char		t[32];
				size_t		tlen;

				if (!parse_string(&ps, t, sizeof(t), &tlen, "unknown message type"))
					return false;
				if (strcmp(t, "hello") == 0)
					msg->type = LK_MSG_HELLO;
				else if (strcmp(t, "subscribe") == 0)
					msg->type = LK_MSG_SUBSCRIBE;
				else
					return fail(&ps, "unknown message type");
				have_type = true;
			}
			else if (strcmp(key, "token") == 0)
			{
				if (!parse_string(&ps, msg->token, sizeof(msg->token), NULL,
								  "\"token\" too long"))
					return false;
				msg->has_token = true;
			}
			else if (strcmp(key, "views") == 0)
			{
				if (!peek_null(&ps))
				{
					if (!parse_views(&ps, msg))
						return false;
					msg->has_views = true;
				}
			}
			else if (strcmp(key, "properties") == 0)
			{
				if (!peek_null(&ps))
				{
					if (!parse_properties(&ps, msg))
						return false;
					msg->has_properties = true;
				}
			}
			else if (strcmp(key, "daily_range") == 0)
			{
				if (!peek_null(&ps))
				{
					if (!parse_daily_range(&ps, msg))
						return false;
					msg->has_daily_range = true;
				}
			}
			else if (strcmp(key, "resume_from") == 0)
			{
				if (!peek_null(&ps))
				{
					if (!parse_number(&ps, true, &msg->resume_from, NULL, 0))
						return false;
					if (msg->resume_from < 0)
						return fail(&ps, "\"resume_from\" must not be negative");
					msg->has_resume_from = true;
				}
			}
			else if (strcmp(key, "epoch") == 0)
			{
				if (!peek_null(&ps))
				{
					if (!parse_string(&ps, msg->epoch, sizeof(msg->epoch), NULL,
									  "\"epoch\" too long"))
						return false;
					msg->has_epoch = true;
				}
			}
			else if (!skip_value(&ps, 1))
				return false;

			skip_ws(&ps);
			if (ps.p < ps.end && *ps.p == ',')
			{
				ps.p++;
				continue;
			}
			if (!expect(&ps, '}'))
				return false;
			break;
		}
	}
	skip_ws(&ps);
	if (ps.p != ps.end)
		return fail(&ps, "invalid JSON: trailing characters after the object");
	if (!have_type)
		return fail(&ps, "\"type\" is required");
	if (msg->type == LK_MSG_HELLO && !msg->has_token)
		return fail(&ps, "\"token\" is required in hello");
	return true;
}

/*
 * lk_json_escape
 *		Write "in" as the inside of a JSON string (no quotes), truncating
 *		to outlen.  Used for the few strings the worker writes itself
 *		(error messages, labels), which never come from jsonb.
 */
void
lk_json_escape(const char *in, char *out, size_t outlen)
{
	size_t		n = 0;

	if (outlen == 0)
		return;
	for (; *in; in++)
	{
		unsigned char c = (unsigned char) *in;
		char		tmp[8];
		const char *add = tmp;
		size_t		alen;

		if (c == '"' || c == '\\')
		{
			tmp[0] = '\\';
			tmp[1] = (char) c;
			tmp[2] = '\0';
		}
		else if (c < 0x20)
			snprintf(tmp, sizeof(tmp), "\\u%04x", c);
		else
		{
			tmp[0] = (char) c;
			tmp[1] = '\0';
		}
		alen = strlen(add);
		if (n + alen + 1 > outlen)
			break;
		memcpy(out + n, add, alen);
		n += alen;
	}
	out[n] = '\0';
}
