// SPDX-License-Identifier: Apache-2.0
#include "event_format.hpp"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

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

// A comm decoded as Node's Buffer#toString('utf8') decodes it (the WHATWG UTF-8 decoder: each
// maximal invalid subpart becomes one U+FFFD), up to the first NUL.
std::vector<uint32_t> DecodeComm(const char *comm, size_t len)
{
	std::vector<uint32_t> cps;
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
	if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f) || cp == '\\' || cp == 0x2028 || cp == 0x2029)
		return true;
	for (const auto &r : kFormatChars)
		if (cp >= r[0] && cp <= r[1])
			return true;
	return false;
}

// printable() of trace-format.ts, padded like String#padEnd(16): the width counts UTF-16 units.
void PutPrintableComm(std::string &out, const std::vector<uint32_t> &cps, size_t width)
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
void PutJsonComm(std::string &out, const std::vector<uint32_t> &cps)
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
std::string Address(const uint8_t *a, uint8_t ip)
{
	char buf[48];
	if (ip == 4) {
		snprintf(buf, sizeof(buf), "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
		return buf;
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
	std::string s;
	auto groups = [&](int from, int to) {
		for (int i = from; i < to; i++) {
			snprintf(buf, sizeof(buf), i == from ? "%x" : ":%x", g[i]);
			s += buf;
		}
	};
	if (best < 0) {
		groups(0, 8);
	} else {
		groups(0, best);
		s += "::";
		groups(best + best_len, 8);
	}
	return s;
}

void PadTo(std::string &out, size_t start, size_t width)
{
	size_t n = out.size() - start;
	if (n < width)
		out.append(width - n, ' ');
}

void PutPadded(std::string &out, const std::string &s, size_t width)
{
	size_t start = out.size();
	out += s;
	PadTo(out, start, width);
}

void PutPadded(std::string &out, uint64_t v, size_t width)
{
	char buf[24];
	int n = snprintf(buf, sizeof(buf), "%" PRIu64, v);
	size_t start = out.size();
	out.append(buf, n);
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
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%" PRIu64 ".%03" PRIu64, n / 1000, n % 1000);
	size_t start = out.size();
	out.append(buf, len);
	PadTo(out, start, width);
}

void PutField(std::string &out, const char *name, uint64_t v)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), ",\"%s\":%" PRIu64, name, v);
	out.append(buf, n);
}

void PutField(std::string &out, const char *name, const char *v)
{
	out += ",\"";
	out += name;
	out += "\":\"";
	out += v;
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
	std::vector<uint32_t> comm = DecodeComm(e.comm, sizeof(e.comm));
	std::string saddr = Address(reinterpret_cast<const uint8_t *>(&e.saddr), e.ip);
	std::string daddr = Address(reinterpret_cast<const uint8_t *>(&e.daddr), e.ip);

	if (opts_.json) {
		out += "{\"type\":\"";
		out += type;
		out += '"';
		PutField(out, "ts_ns", e.ts_ns);
		PutField(out, "pid", e.pid);
		out += ",\"comm\":";
		PutJsonComm(out, comm);
		PutField(out, "ip", e.ip);
		PutField(out, "saddr", saddr.c_str());
		PutField(out, "daddr", daddr.c_str());
		PutField(out, "sport", e.sport);
		PutField(out, "dport", e.dport);
		PutField(out, "netns", e.netns);
		PutField(out, "cgroup_id", e.cgroup_id);
		PutField(out, "direction", direction);
		if (e.type == TCP_EVENT_TYPE_CLOSE) {
			PutField(out, "duration_ns", e.duration_ns);
			PutField(out, "bytes_sent", e.bytes_sent);
			PutField(out, "bytes_received", e.bytes_received);
		}
		if (e.type == TCP_EVENT_TYPE_CONNECT_FAILED)
			PutField(out, "reason", reason);
		out += "}\n";
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
	PutPadded(out, e.ip == 6 ? "[" + saddr + "]" : saddr, 16);
	out += ' ';
	PutPadded(out, e.ip == 6 ? "[" + daddr + "]" : daddr, 16);
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
