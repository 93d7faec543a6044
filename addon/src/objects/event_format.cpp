// SPDX-License-Identifier: Apache-2.0
#include "event_format.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>

#include <linux/types.h>

#include "tcptracer.h"

namespace tcptracer
{
namespace
{

const char *TypeWord(uint8_t t)
{
	switch (t) {
	case TCP_EVENT_TYPE_CONNECT:
		return "connect";
	case TCP_EVENT_TYPE_ACCEPT:
		return "accept";
	case TCP_EVENT_TYPE_CLOSE:
		return "close";
	case TCP_EVENT_TYPE_CONNECT_FAILED:
		return "connect_failed";
	default:
		return nullptr;
	}
}

// The text form's TYPE column with -v: "connfail" where JSON says "connect_failed".
const char *TypeColumn(uint8_t t)
{
	return t == TCP_EVENT_TYPE_CONNECT_FAILED ? "connfail" : TypeWord(t);
}

const char *TypeLetter(uint8_t t)
{
	switch (t) {
	case TCP_EVENT_TYPE_CONNECT:
		return "C";
	case TCP_EVENT_TYPE_ACCEPT:
		return "A";
	case TCP_EVENT_TYPE_CLOSE:
		return "X";
	default:
		return "F";
	}
}

const char *ReasonWord(uint8_t r)
{
	switch (r) {
	case FAIL_REASON_REFUSED:
		return "refused";
	case FAIL_REASON_TIMEOUT:
		return "timeout";
	case FAIL_REASON_UNREACHABLE:
		return "unreachable";
	case FAIL_REASON_OTHER:
		return "other";
	default:
		return nullptr;
	}
}

const char *DirectionWord(uint8_t d)
{
	switch (d) {
	case DIRECTION_OUTBOUND:
		return "outbound";
	case DIRECTION_INBOUND:
		return "inbound";
	default:
		return nullptr;
	}
}

// The decimal digits of v, appended: what printf's %PRIu64 writes, without its cost per call.
void PutU64(std::string &out, uint64_t v)
{
	char buf[20];
	int i = sizeof(buf);
	do {
		buf[--i] = static_cast<char>('0' + v % 10);
		v /= 10;
	} while (v);
	out.append(buf + i, sizeof(buf) - i);
}

void PutHex(std::string &out, uint32_t v)
{
	static const char kDigits[] = "0123456789abcdef";
	char buf[8];
	int i = sizeof(buf);
	do {
		buf[--i] = kDigits[v & 0xf];
		v >>= 4;
	} while (v);
	out.append(buf + i, sizeof(buf) - i);
}

// A comm decoded as Node's Buffer#toString('utf8') decodes it (the WHATWG UTF-8 decoder: each
// maximal invalid subpart becomes one U+FFFD), up to the first NUL.
// A comm of 16 bytes decodes to at most 16 code points.
struct CodePoints {
	uint32_t cp[TASK_COMM_LEN];
	size_t n = 0;
	void push_back(uint32_t c)
	{
		cp[n++] = c;
	}
	const uint32_t *begin() const
	{
		return cp;
	}
	const uint32_t *end() const
	{
		return cp + n;
	}
};

CodePoints DecodeComm(const char *comm, size_t len)
{
	CodePoints cps;
	size_t end = 0;
	while (end < len && comm[end] != 0)
		end++;
	uint32_t cp = 0, needed = 0, seen = 0;
	uint8_t lower = 0x80, upper = 0xbf;
	for (size_t i = 0; i < end;) {
		uint8_t b = static_cast<uint8_t>(comm[i]);
		if (needed == 0) {
			i++;
			if (b <= 0x7f) {
				cps.push_back(b);
			} else if (b >= 0xc2 && b <= 0xdf) {
				needed = 1;
				cp = b & 0x1f;
			} else if (b >= 0xe0 && b <= 0xef) {
				if (b == 0xe0)
					lower = 0xa0;
				if (b == 0xed)
					upper = 0x9f;
				needed = 2;
				cp = b & 0x0f;
			} else if (b >= 0xf0 && b <= 0xf4) {
				if (b == 0xf0)
					lower = 0x90;
				if (b == 0xf4)
					upper = 0x8f;
				needed = 3;
				cp = b & 0x07;
			} else {
				cps.push_back(0xfffd);
			}
			continue;
		}
		if (b < lower || b > upper) {
			// the sequence ends before this byte, which starts over
			cp = needed = seen = 0;
			lower = 0x80;
			upper = 0xbf;
			cps.push_back(0xfffd);
			continue;
		}
		i++;
		lower = 0x80;
		upper = 0xbf;
		cp = (cp << 6) | (b & 0x3f);
		if (++seen == needed) {
			cps.push_back(cp);
			cp = needed = seen = 0;
		}
	}
	if (needed)
		cps.push_back(0xfffd);
	return cps;
}

void PutUtf8(std::string &out, uint32_t cp)
{
	if (cp < 0x80) {
		out += static_cast<char>(cp);
	} else if (cp < 0x800) {
		out += static_cast<char>(0xc0 | (cp >> 6));
		out += static_cast<char>(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		out += static_cast<char>(0xe0 | (cp >> 12));
		out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
		out += static_cast<char>(0x80 | (cp & 0x3f));
	} else {
		out += static_cast<char>(0xf0 | (cp >> 18));
		out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
		out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
		out += static_cast<char>(0x80 | (cp & 0x3f));
	}
}

// Unicode's format characters (General_Category Cf), as \p{Cf} matches them in Node 20 (Unicode
// 17).
constexpr uint32_t kFormatChars[][2] = {
    {0xad, 0xad},	{0x600, 0x605},	    {0x61c, 0x61c},	{0x6dd, 0x6dd},
    {0x70f, 0x70f},	{0x890, 0x891},	    {0x8e2, 0x8e2},	{0x180e, 0x180e},
    {0x200b, 0x200f},	{0x202a, 0x202e},   {0x2060, 0x2064},	{0x2066, 0x206f},
    {0xfeff, 0xfeff},	{0xfff9, 0xfffb},   {0x110bd, 0x110bd}, {0x110cd, 0x110cd},
    {0x13430, 0x1343f}, {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a}, {0xe0001, 0xe0001},
    {0xe0020, 0xe007f},
};

bool NeedsEscape(uint32_t cp)
{
	if (cp >= 0x20 && cp < 0x7f) // printable ASCII, the usual case
		return cp == '\\';
	if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f) || cp == '\\' || cp == 0x2028 || cp == 0x2029)
		return true;
	for (const auto &r : kFormatChars)
		if (cp >= r[0] && cp <= r[1])
			return true;
	return false;
}

// printable() of trace-format.ts, padded like String#padEnd(16): the width counts UTF-16 units.
void PutPrintableComm(std::string &out, const CodePoints &cps, size_t width)
{
	size_t units = 0;
	char esc[16];
	for (uint32_t cp : cps) {
		if (!NeedsEscape(cp)) {
			PutUtf8(out, cp);
			units += cp >= 0x10000 ? 2 : 1;
			continue;
		}
		int n;
		if (cp == '\\')
			n = snprintf(esc, sizeof(esc), "\\\\");
		else if (cp < 0x100)
			n = snprintf(esc, sizeof(esc), "\\x%02x", cp);
		else if (cp < 0x10000)
			n = snprintf(esc, sizeof(esc), "\\u%04x", cp);
		else
			n = snprintf(esc, sizeof(esc), "\\u{%x}", cp);
		out.append(esc, n);
		units += n;
	}
	if (units < width)
		out.append(width - units, ' ');
}

// JSON.stringify of the comm.
void PutJsonComm(std::string &out, const CodePoints &cps)
{
	out += '"';
	for (uint32_t cp : cps) {
		switch (cp) {
		case '"':
			out += "\\\"";
			break;
		case '\\':
			out += "\\\\";
			break;
		case '\b':
			out += "\\b";
			break;
		case '\f':
			out += "\\f";
			break;
		case '\n':
			out += "\\n";
			break;
		case '\r':
			out += "\\r";
			break;
		case '\t':
			out += "\\t";
			break;
		default:
			if (cp < 0x20) {
				char esc[8];
				int n = snprintf(esc, sizeof(esc), "\\u%04x", cp);
				out.append(esc, n);
			} else {
				PutUtf8(out, cp);
			}
		}
	}
	out += '"';
}

// formatIPv4 / formatIPv6 of abi.ts: RFC 5952, the longest run of two or more zero groups as "::".
void PutAddress(std::string &out, const uint8_t *a, uint8_t ip)
{
	if (ip == 4) {
		for (int i = 0; i < 4; i++) {
			if (i)
				out += '.';
			PutU64(out, a[i]);
		}
		return;
	}
	unsigned g[8];
	for (int i = 0; i < 8; i++)
		g[i] = (a[2 * i] << 8) | a[2 * i + 1];
	int best = -1, best_len = 0;
	for (int i = 0; i < 8;) {
		if (g[i] != 0) {
			i++;
			continue;
		}
		int j = i;
		while (j < 8 && g[j] == 0)
			j++;
		if (j - i > best_len && j - i >= 2) {
			best = i;
			best_len = j - i;
		}
		i = j;
	}
	auto groups = [&](int from, int to) {
		for (int i = from; i < to; i++) {
			if (i != from)
				out += ':';
			PutHex(out, g[i]);
		}
	};
	if (best < 0) {
		groups(0, 8);
	} else {
		groups(0, best);
		out += "::";
		groups(best + best_len, 8);
	}
}

void PadTo(std::string &out, size_t start, size_t width)
{
	size_t n = out.size() - start;
	if (n < width)
		out.append(width - n, ' ');
}

void PutPadded(std::string &out, const char *s, size_t width)
{
	size_t start = out.size();
	out += s;
	PadTo(out, start, width);
}

void PutPadded(std::string &out, uint64_t v, size_t width)
{
	size_t start = out.size();
	PutU64(out, v);
	PadTo(out, start, width);
}

// The address column: IPv6 in brackets.
void PutAddressColumn(std::string &out, const uint8_t *a, uint8_t ip, size_t width)
{
	size_t start = out.size();
	if (ip == 6)
		out += '[';
	PutAddress(out, a, ip);
	if (ip == 6)
		out += ']';
	PadTo(out, start, width);
}

// (Number(ns) / 1e9).toFixed(3): the double nearest ns/1e9, to 3 decimals, a tie rounded up as
// toFixed rounds it (printf would round it to even). ns * 1000 is exact in a long double.
void PutSeconds(std::string &out, uint64_t ns, size_t width)
{
	double x = static_cast<double>(ns) / 1e9;
	long double t = static_cast<long double>(x) * 1000.0L;
	long double whole = floorl(t);
	uint64_t n = static_cast<uint64_t>(whole);
	if (t - whole >= 0.5L)
		n++;
	size_t start = out.size();
	PutU64(out, n / 1000);
	uint64_t ms = n % 1000;
	out += '.';
	out += static_cast<char>('0' + ms / 100);
	out += static_cast<char>('0' + ms / 10 % 10);
	out += static_cast<char>('0' + ms % 10);
	PadTo(out, start, width);
}

// A literal, appended without strlen().
template <size_t N> void Lit(std::string &out, const char (&s)[N])
{
	out.append(s, N - 1);
}

void PutQuoted(std::string &out, const char *v)
{
	out += '"';
	out += v;
	out += '"';
}

void PutQuotedAddress(std::string &out, const uint8_t *a, uint8_t ip)
{
	out += '"';
	PutAddress(out, a, ip);
	out += '"';
}

} // namespace

bool EventFormatter::Append(std::string &out, const struct event &e)
{
	const char *type = TypeWord(e.type);
	const char *direction = DirectionWord(e.direction);
	const char *reason = e.type == TCP_EVENT_TYPE_CONNECT_FAILED ? ReasonWord(e.reason) : "";
	if (!type || !direction || !reason || (e.ip != 4 && e.ip != 6))
		return false;
	CodePoints comm = DecodeComm(e.comm, sizeof(e.comm));
	const auto *saddr = reinterpret_cast<const uint8_t *>(&e.saddr);
	const auto *daddr = reinterpret_cast<const uint8_t *>(&e.daddr);

	if (opts_.json) {
		Lit(out, "{\"type\":");
		PutQuoted(out, type);
		Lit(out, ",\"ts_ns\":");
		PutU64(out, e.ts_ns);
		Lit(out, ",\"pid\":");
		PutU64(out, e.pid);
		Lit(out, ",\"comm\":");
		PutJsonComm(out, comm);
		Lit(out, ",\"ip\":");
		PutU64(out, e.ip);
		Lit(out, ",\"saddr\":");
		PutQuotedAddress(out, saddr, e.ip);
		Lit(out, ",\"daddr\":");
		PutQuotedAddress(out, daddr, e.ip);
		Lit(out, ",\"sport\":");
		PutU64(out, e.sport);
		Lit(out, ",\"dport\":");
		PutU64(out, e.dport);
		Lit(out, ",\"netns\":");
		PutU64(out, e.netns);
		Lit(out, ",\"cgroup_id\":");
		PutU64(out, e.cgroup_id);
		Lit(out, ",\"direction\":");
		PutQuoted(out, direction);
		if (e.type == TCP_EVENT_TYPE_CLOSE) {
			Lit(out, ",\"duration_ns\":");
			PutU64(out, e.duration_ns);
			Lit(out, ",\"bytes_sent\":");
			PutU64(out, e.bytes_sent);
			Lit(out, ",\"bytes_received\":");
			PutU64(out, e.bytes_received);
		}
		if (e.type == TCP_EVENT_TYPE_CONNECT_FAILED) {
			Lit(out, ",\"reason\":");
			PutQuoted(out, reason);
		}
		Lit(out, "}\n");
		return true;
	}

	size_t line = out.size();
	if (opts_.timestamp) {
		// records from different CPUs can arrive slightly out of order: the zero is the
		// earliest
		if (!have_start_ || e.ts_ns < start_ns_) {
			start_ns_ = e.ts_ns;
			have_start_ = true;
		}
		uint64_t rel = e.ts_ns - start_ns_;
		if (opts_.verbose)
			PutPadded(out, rel, 14);
		else
			PutSeconds(out, rel, 9);
	}
	if (opts_.verbose)
		PutPadded(out, TypeColumn(e.type), 12);
	else
		PutPadded(out, TypeLetter(e.type), 2);
	out += ' ';
	PutPadded(out, e.pid, 6);
	out += ' ';
	PutPrintableComm(out, comm, 16);
	out += ' ';
	PutPadded(out, e.ip, 2);
	out += ' ';
	PutAddressColumn(out, saddr, e.ip, 16);
	out += ' ';
	PutAddressColumn(out, daddr, e.ip, 16);
	out += ' ';
	PutPadded(out, e.sport, 6);
	out += ' ';
	PutPadded(out, e.dport, 6);
	if (opts_.verbose && !opts_.netns_filtered) {
		out += ' ';
		PutPadded(out, e.netns, 8);
	}
	if (e.type == TCP_EVENT_TYPE_CONNECT_FAILED) {
		out += ' ';
		out += reason;
	}
	// trimEnd(): only the padding of the last column can end the line
	size_t end = out.size();
	while (end > line && out[end - 1] == ' ')
		end--;
	out.resize(end);
	out += '\n';
	return true;
}

} // namespace tcptracer
