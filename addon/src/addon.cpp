// SPDX-License-Identifier: Apache-2.0
// Module entry: libbpf log routing, the Tracer class, the shared record layout
// and a few host helpers.
#include <bpf/libbpf.h>
#include <malloc.h>
#include <napi.h>
#include <sys/mount.h>
#include <sys/statfs.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "bpf_error.hpp"
#include "caps.hpp"
#include "log.hpp"
#include "objects/tracer.hpp"
#include "sd_notify.hpp"

extern "C" {
#include <linux/types.h>

#include "tcptracer.h"
}

namespace tcptracer
{

namespace
{

std::mutex log_mu;
std::vector<std::pair<int, std::string>> log_lines;
std::atomic<bool> verbose{false};

int LibbpfPrint(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG && !verbose.load())
		return 0;
	char buf[1024];
	int n = vsnprintf(buf, sizeof(buf), fmt, args);
	std::string line(buf, n < 0 ? 0 : std::min<size_t>(n, sizeof(buf) - 1));
	while (!line.empty() && line.back() == '\n')
		line.pop_back();
	std::lock_guard<std::mutex> lock(log_mu);
	if (log_lines.size() < 10000)
		log_lines.emplace_back(level, std::move(line));
	return n;
}

constexpr long kTracefsMagic = 0x74726163;
constexpr long kBpffsMagic = 0xcafe4a11;

bool HasFs(const char *path, long magic)
{
	struct statfs st;
	return statfs(path, &st) == 0 && st.f_type == magic;
}

// Mount tracefs and bpffs where they are missing. Returns what each step did:
// "present", "mounted" or an error string; never throws, since only some hooks
// need tracefs and only pinning needs bpffs.
Napi::Value EnsureFilesystems(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	Napi::Object out = Napi::Object::New(env);
	struct {
		const char *key;
		const char *path;
		const char *type;
		const char *source;
		long magic;
	} fss[] = {
	    {"tracefs", "/sys/kernel/tracing", "tracefs", "nodev", kTracefsMagic},
	    {"bpffs", "/sys/fs/bpf", "bpf", "bpf", kBpffsMagic},
	};
	for (auto &fs : fss) {
		if (HasFs(fs.path, fs.magic)) {
			out.Set(fs.key, "present");
		} else if (mount(fs.source, fs.path, fs.type, 0, nullptr) == 0) {
			out.Set(fs.key, "mounted");
		} else {
			int err = errno;
			out.Set(fs.key, std::string("not mounted: mount -t ") + fs.type + " " +
					    fs.source + " " + fs.path +
					    " failed: " + strerror(err) +
					    (err == EPERM ? " (needs root / CAP_SYS_ADMIN)" : ""));
		}
	}
	return out;
}

Napi::Value LibbpfVersion(const Napi::CallbackInfo &info)
{
	return Napi::String::New(info.Env(), libbpf_version_string());
}

Napi::Value SetVerboseJs(const Napi::CallbackInfo &info)
{
	SetVerbose(info[0].ToBoolean().Value());
	return info.Env().Undefined();
}

// Each record of bpf/tcptracer.h that TypeScript reads or writes: its sizeof() and the offsetof()
// of every field, so no TypeScript hard-codes a layout.
#define FIELD(obj, type, f) obj.Set(#f, offsetof(struct type, f))

Napi::Object Struct(Napi::Env env, size_t size)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("size", size);
	return o;
}

Napi::Object Layout(Napi::Env env)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("commLen", TASK_COMM_LEN);

	Napi::Object ev = Struct(env, sizeof(struct event));
	FIELD(ev, event, saddr);
	FIELD(ev, event, daddr);
	FIELD(ev, event, ts_ns);
	FIELD(ev, event, duration_ns);
	FIELD(ev, event, bytes_sent);
	FIELD(ev, event, bytes_received);
	FIELD(ev, event, cgroup_id);
	FIELD(ev, event, pid);
	FIELD(ev, event, netns);
	FIELD(ev, event, sport);
	FIELD(ev, event, dport);
	FIELD(ev, event, type);
	FIELD(ev, event, ip);
	FIELD(ev, event, reason);
	FIELD(ev, event, direction);
	FIELD(ev, event, comm);
	o.Set("event", ev);

	Napi::Object ak = Struct(env, sizeof(struct agg_key));
	FIELD(ak, agg_key, cgroup_id);
	FIELD(ak, agg_key, netns);
	FIELD(ak, agg_key, pid);
	FIELD(ak, agg_key, port);
	FIELD(ak, agg_key, ip);
	FIELD(ak, agg_key, direction);
	FIELD(ak, agg_key, flags);
	FIELD(ak, agg_key, comm);
	o.Set("aggKey", ak);

	Napi::Object av = Struct(env, sizeof(struct agg_value));
	FIELD(av, agg_value, opened);
	FIELD(av, agg_value, closed);
	FIELD(av, agg_value, failed);
	FIELD(av, agg_value, sent_bytes);
	FIELD(av, agg_value, received_bytes);
	FIELD(av, agg_value, duration_sum_ns);
	FIELD(av, agg_value, seeded_closed);
	FIELD(av, agg_value, last_ns);
	FIELD(av, agg_value, buckets);
	av.Set("maxBuckets", MAX_BUCKETS);
	av.Set("failReasons", FAIL_REASONS);
	o.Set("aggValue", av);

	Napi::Object tk = Struct(env, sizeof(struct tuple_key));
	FIELD(tk, tuple_key, saddr);
	FIELD(tk, tuple_key, daddr);
	FIELD(tk, tuple_key, netns);
	FIELD(tk, tuple_key, sport);
	FIELD(tk, tuple_key, dport);
	FIELD(tk, tuple_key, family);
	o.Set("tupleKey", tk);

	Napi::Object lk = Struct(env, sizeof(struct listener_key));
	FIELD(lk, listener_key, netns);
	FIELD(lk, listener_key, port);
	FIELD(lk, listener_key, family);
	o.Set("listenerKey", lk);

	Napi::Object ow = Struct(env, sizeof(struct owner));
	FIELD(ow, owner, cgroup_id);
	FIELD(ow, owner, pid);
	FIELD(ow, owner, comm);
	o.Set("owner", ow);

	Napi::Object lv = Struct(env, sizeof(struct listener_value));
	FIELD(lv, listener_value, owner);
	FIELD(lv, listener_value, sk);
	o.Set("listenerValue", lv);

	Napi::Object sv = Struct(env, sizeof(struct seed_value));
	FIELD(sv, seed_value, owner);
	FIELD(sv, seed_value, port);
	FIELD(sv, seed_value, direction);
	o.Set("seedValue", sv);
	return o;
}

#undef FIELD

// Every enum of bpf/tcptracer.h, member by member, and the state version.
Napi::Object Constants(Napi::Env env)
{
	Napi::Object o = Napi::Object::New(env);
#define ENUM(name) o.Set(#name, static_cast<int>(name))
	// enum event_type
	ENUM(TCP_EVENT_TYPE_CONNECT);
	ENUM(TCP_EVENT_TYPE_ACCEPT);
	ENUM(TCP_EVENT_TYPE_CLOSE);
	ENUM(TCP_EVENT_TYPE_CONNECT_FAILED);
	ENUM(TCP_EVENT_TYPE_SEEDED_CLOSE);
	ENUM(TCP_EVENT_TYPE_CLOSE_UNSEEN);
	// enum connect_fail_reason
	ENUM(FAIL_REASON_NONE);
	ENUM(FAIL_REASON_REFUSED);
	ENUM(FAIL_REASON_TIMEOUT);
	ENUM(FAIL_REASON_UNREACHABLE);
	ENUM(FAIL_REASON_OTHER);
	// enum direction
	ENUM(DIRECTION_OUTBOUND);
	ENUM(DIRECTION_INBOUND);
	// enum accept_mode
	ENUM(ACCEPT_MODE_LISTENER);
	ENUM(ACCEPT_MODE_SYSCALL);
	ENUM(ACCEPT_MODE_KERNEL);
	// enum stat_index
	ENUM(STAT_EVENTS_LOST);
	ENUM(STAT_MAP_UPDATE_FAILED);
	ENUM(STAT_ACCEPT_UNATTRIBUTED);
	ENUM(STAT_CONNECT_UNATTRIBUTED);
	ENUM(STAT_AGG_FULL);
	ENUM(STAT_CLOSE_UNSEEN);
	ENUM(STAT_CONNECT_UNSEEN);
	ENUM(STAT_MAX);
	// enum label_bits
	ENUM(LABEL_PID);
	ENUM(LABEL_CGROUP);
	ENUM(LABEL_PORT);
	// enum agg_flags
	ENUM(AGG_OVERFLOW);
	ENUM(AGG_UNATTRIBUTED);
#undef ENUM
	o.Set("STATE_VERSION", STATE_VERSION);
	o.Set("numPossibleCpus", libbpf_num_possible_cpus());
	return o;
}

} // namespace

void InstallLibbpfLog()
{
	libbpf_set_print(LibbpfPrint);
}

void SetVerbose(bool on)
{
	verbose.store(on);
}

void FlushLog(Napi::Env env, const Napi::FunctionReference &log)
{
	std::vector<std::pair<int, std::string>> lines;
	{
		std::lock_guard<std::mutex> lock(log_mu);
		lines.swap(log_lines);
	}
	for (auto &[level, msg] : lines) {
		const char *name = level == LIBBPF_WARN	  ? "warn"
				   : level == LIBBPF_INFO ? "info"
							  : "debug";
		if (log.IsEmpty())
			fprintf(stderr, "libbpf: %s: %s\n", name, msg.c_str());
		else
			log.Call({Napi::String::New(env, name), Napi::String::New(env, msg)});
	}
}

// mmapThreshold(bytes) -> whether set. Allocations of at least `bytes` get their own mapping, which
// free() gives back to the kernel. glibc otherwise raises this threshold each time such a block is
// freed, and later blocks of that size come from the heap, where freed memory mostly stays
// resident: the exporter's multi-megabyte exposition Buffers then let its RSS creep up. Not glibc:
// false.
Napi::Value MmapThreshold(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!info[0].IsNumber())
		throw Napi::TypeError::New(env, "mmapThreshold(bytes): bytes must be a number");
#ifdef __GLIBC__
	int bytes = info[0].As<Napi::Number>().Int32Value();
	return Napi::Boolean::New(env, bytes > 0 && mallopt(M_MMAP_THRESHOLD, bytes) == 1);
#else
	return Napi::Boolean::New(env, false);
#endif
}

// formatEvents(records, { json, timestamp, verbose, netnsFiltered }) -> Buffer: the lines `trace`
// prints for back-to-back struct event records, as the drain thread formats them in output mode.
// For the tests, which hold it against src/cli/trace-format.ts.
Napi::Value FormatEvents(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!info[0].IsBuffer())
		throw Napi::TypeError::New(
		    env, "formatEvents(records, options): records must be a Buffer");
	auto records = info[0].As<Napi::Buffer<uint8_t>>();
	if (records.Length() % sizeof(struct event))
		throw Napi::RangeError::New(
		    env, "formatEvents: " + std::to_string(records.Length()) +
			     " bytes are not a whole number of " +
			     std::to_string(sizeof(struct event)) + "-byte records");
	Napi::Object o = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
	auto flag = [&](const char *k) { return o.Has(k) && o.Get(k).ToBoolean().Value(); };
	FormatOptions fo;
	fo.json = flag("json");
	fo.timestamp = flag("timestamp");
	fo.verbose = flag("verbose");
	fo.netns_filtered = flag("netnsFiltered");
	EventFormatter f(fo);
	std::string out;
	out.reserve(records.Length() / sizeof(struct event) * 256);
	for (size_t off = 0; off < records.Length(); off += sizeof(struct event)) {
		struct event e;
		memcpy(&e, records.Data() + off, sizeof(e));
		f.Append(out, e);
	}
	return Napi::Buffer<char>::Copy(env, out.data(), out.size());
}

} // namespace tcptracer

Napi::Object InitModule(Napi::Env env, Napi::Object exports)
{
	using namespace tcptracer;
	InstallLibbpfLog();
	exports.Set("Tracer", Tracer::Init(env));
	exports.Set("layout", Layout(env));
	exports.Set("constants", Constants(env));
	exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion, "libbpfVersion"));
	exports.Set("ensureFilesystems",
		    Napi::Function::New(env, EnsureFilesystems, "ensureFilesystems"));
	exports.Set("setVerbose", Napi::Function::New(env, SetVerboseJs, "setVerbose"));
	exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
	exports.Set("dropCapabilities",
		    Napi::Function::New(env, DropCapabilities, "dropCapabilities"));
	exports.Set("bpfNeedsCapability",
		    Napi::Function::New(env, BpfNeedsCapability, "bpfNeedsCapability"));
	exports.Set("mmapThreshold", Napi::Function::New(env, MmapThreshold, "mmapThreshold"));
	exports.Set("formatEvents", Napi::Function::New(env, FormatEvents, "formatEvents"));
	return exports;
}

NODE_API_MODULE(tcptracer, InitModule)
