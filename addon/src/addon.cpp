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

// offsetof() every field of struct event, so the decoder never hard-codes it.
Napi::Object Layout(Napi::Env env)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("size", sizeof(struct event));
#define FIELD(f) o.Set(#f, offsetof(struct event, f))
	FIELD(saddr);
	FIELD(daddr);
	FIELD(ts_ns);
	FIELD(duration_ns);
	FIELD(bytes_sent);
	FIELD(bytes_received);
	FIELD(cgroup_id);
	FIELD(pid);
	FIELD(netns);
	FIELD(sport);
	FIELD(dport);
	FIELD(type);
	FIELD(ip);
	FIELD(reason);
	FIELD(direction);
	FIELD(comm);
#undef FIELD
	o.Set("commLen", TASK_COMM_LEN);
	o.Set("listenerKeySize", sizeof(struct listener_key));
	o.Set("ownerSize", sizeof(struct owner));
	o.Set("listenerValueSize", sizeof(struct listener_value));

	Napi::Object ak = Napi::Object::New(env);
	ak.Set("size", sizeof(struct agg_key));
#define AK(f) ak.Set(#f, offsetof(struct agg_key, f))
	AK(cgroup_id);
	AK(netns);
	AK(pid);
	AK(port);
	AK(ip);
	AK(direction);
	AK(flags);
	AK(comm);
#undef AK
	o.Set("aggKey", ak);

	Napi::Object av = Napi::Object::New(env);
	av.Set("size", sizeof(struct agg_value));
#define AV(f) av.Set(#f, offsetof(struct agg_value, f))
	AV(opened);
	AV(closed);
	AV(failed);
	AV(sent_bytes);
	AV(received_bytes);
	AV(duration_sum_ns);
	AV(seeded_closed);
	AV(last_ns);
	AV(buckets);
#undef AV
	av.Set("maxBuckets", MAX_BUCKETS);
	av.Set("failReasons", FAIL_REASONS);
	o.Set("aggValue", av);

	Napi::Object tk = Napi::Object::New(env);
	tk.Set("size", sizeof(struct tuple_key));
#define TK(f) tk.Set(#f, offsetof(struct tuple_key, f))
	TK(saddr);
	TK(daddr);
	TK(netns);
	TK(sport);
	TK(dport);
	TK(family);
#undef TK
	o.Set("tupleKey", tk);

	Napi::Object sv = Napi::Object::New(env);
	sv.Set("size", sizeof(struct seed_value));
	sv.Set("owner", offsetof(struct seed_value, owner));
	sv.Set("port", offsetof(struct seed_value, port));
	sv.Set("direction", offsetof(struct seed_value, direction));
	o.Set("seedValue", sv);
	return o;
}

Napi::Object Constants(Napi::Env env)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("STAT_EVENTS_LOST", static_cast<int>(STAT_EVENTS_LOST));
	o.Set("STAT_MAP_UPDATE_FAILED", static_cast<int>(STAT_MAP_UPDATE_FAILED));
	o.Set("STAT_ACCEPT_UNATTRIBUTED", static_cast<int>(STAT_ACCEPT_UNATTRIBUTED));
	o.Set("STAT_CONNECT_UNATTRIBUTED", static_cast<int>(STAT_CONNECT_UNATTRIBUTED));
	o.Set("STAT_AGG_FULL", static_cast<int>(STAT_AGG_FULL));
	o.Set("STAT_CLOSE_UNSEEN", static_cast<int>(STAT_CLOSE_UNSEEN));
	o.Set("STAT_CONNECT_UNSEEN", static_cast<int>(STAT_CONNECT_UNSEEN));
	o.Set("STAT_MAX", static_cast<int>(STAT_MAX));
	o.Set("LABEL_PID", static_cast<int>(LABEL_PID));
	o.Set("LABEL_CGROUP", static_cast<int>(LABEL_CGROUP));
	o.Set("LABEL_PORT", static_cast<int>(LABEL_PORT));
	o.Set("AGG_OVERFLOW", static_cast<int>(AGG_OVERFLOW));
	o.Set("AGG_UNATTRIBUTED", static_cast<int>(AGG_UNATTRIBUTED));
	o.Set("ACCEPT_MODE_LISTENER", static_cast<int>(ACCEPT_MODE_LISTENER));
	o.Set("ACCEPT_MODE_SYSCALL", static_cast<int>(ACCEPT_MODE_SYSCALL));
	o.Set("ACCEPT_MODE_KERNEL", static_cast<int>(ACCEPT_MODE_KERNEL));
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
	return exports;
}

NODE_API_MODULE(tcptracer, InitModule)
