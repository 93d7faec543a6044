// SPDX-License-Identifier: Apache-2.0
#include "tracer.hpp"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <set>

#include "../bpf_error.hpp"
#include "../log.hpp"

extern "C" {
#include <linux/types.h>

#include "tcptracer.h"
}

namespace tcptracer
{

namespace
{

// Every live Tracer, so the environment's cleanup hook can close them at exit.
struct Live {
	std::set<Tracer *> tracers;
};

Live *LiveSet(Napi::Env env)
{
	Live *live = env.GetInstanceData<Live>();
	if (!live) {
		live = new Live();
		env.SetInstanceData(live);
		env.AddCleanupHook([live]() {
			std::set<Tracer *> copy = live->tracers;
			for (Tracer *t : copy)
				t->Close();
		});
	}
	return live;
}

Napi::FunctionReference *LogRef(Napi::Env env, const Napi::Object &opts)
{
	auto *ref = new Napi::FunctionReference();
	if (opts.Has("log") && opts.Get("log").IsFunction())
		*ref = Napi::Persistent(opts.Get("log").As<Napi::Function>());
	return ref;
}

std::string MapName(const Napi::Value &v)
{
	if (!v.IsString())
		throw Napi::TypeError::New(v.Env(), "map name must be a string");
	return v.As<Napi::String>().Utf8Value();
}

size_t ValueBytes(bpf_map *map)
{
	size_t vs = bpf_map__value_size(map);
	switch (bpf_map__type(map)) {
	case BPF_MAP_TYPE_PERCPU_ARRAY:
	case BPF_MAP_TYPE_PERCPU_HASH:
	case BPF_MAP_TYPE_LRU_PERCPU_HASH:
		return ((vs + 7) / 8) * 8 * libbpf_num_possible_cpus();
	default:
		return vs;
	}
}

std::vector<uint8_t> BufferBytes(Napi::Value v, size_t want, const char *what)
{
	if (!v.IsBuffer())
		throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Buffer");
	auto b = v.As<Napi::Buffer<uint8_t>>();
	if (b.Length() != want)
		throw Napi::RangeError::New(
		    v.Env(), std::string(what) + " is " + std::to_string(b.Length()) +
				 " bytes; the map expects " + std::to_string(want));
	return std::vector<uint8_t>(b.Data(), b.Data() + b.Length());
}

// The key and value size of every map the object defines, as bpf/tcptracer.h gives them. libbpf
// checks a reused pinned map against the object, but nothing else checks the object against the
// header the addon and the TypeScript decoders were built with: a map of another size would be
// misread, record by record, without an error.
// Output mode: formatted lines are written once this many bytes are pending, and after each poll.
constexpr size_t kOutputChunk = 256 * 1024;

struct MapShape {
	const char *name;
	size_t key;
	size_t value;
};

constexpr MapShape kMapShapes[] = {
    {"control", sizeof(__u32), sizeof(__u64)},
    {"events", 0, 0}, // ring buffer: records of struct event, no keys or values
    {"stats", sizeof(__u32), sizeof(__u64)},
    {"listeners", sizeof(struct listener_key), sizeof(struct listener_value)},
    {"conns", sizeof(__u64), sizeof(struct conn)},
    {"aggs", sizeof(struct agg_key), sizeof(struct agg_value)},
    {"agg_zero", sizeof(__u32), sizeof(struct agg_value)},
    {"netns_filter", sizeof(__u32), sizeof(__u8)},
    {"port_filter", sizeof(__u16), sizeof(__u8)},
    {"seeded", sizeof(struct tuple_key), sizeof(struct seed_value)},
    {"set_state_seen", sizeof(__u32), sizeof(struct seen)},
};

// "" when every map of obj has the sizes of kMapShapes, else what differs. The object's global
// variables (.rodata, .bss) are maps too, written by name through BTF: they are not checked.
std::string CheckMapSizes(bpf_object *obj)
{
	bpf_map *m;
	bpf_object__for_each_map (m, obj) {
		if (bpf_map__is_internal(m))
			continue;
		std::string name = bpf_map__name(m);
		const MapShape *want = nullptr;
		for (const MapShape &s : kMapShapes)
			if (name == s.name)
				want = &s;
		if (!want)
			return "map " + name + " is not one bpf/tcptracer.h describes";
		size_t key = bpf_map__key_size(m), value = bpf_map__value_size(m);
		if (key != want->key || value != want->value)
			return "map " + name + " has " + std::to_string(key) + "-byte keys and " +
			       std::to_string(value) + "-byte values, bpf/tcptracer.h says " +
			       std::to_string(want->key) + " and " + std::to_string(want->value);
	}
	return "";
}

} // namespace

// Runs on the JS thread: wrap the batch in a Buffer that frees it, call JS.
void CallJsWithBatch(Napi::Env env, Napi::Function cb, std::nullptr_t *, Batch *batch)
{
	if (env == nullptr || cb.IsEmpty()) {
		delete batch; // environment is shutting down
		return;
	}
	Napi::Value buf = env.Null();
	Napi::Value err = env.Null();
	uint32_t count = batch->count;
	if (batch->err) {
		err = MakeBpfError(env, batch->op, batch->err).Value();
		delete batch;
	} else {
		buf = Napi::Buffer<uint8_t>::New(
		    env, batch->data.data(), batch->data.size(),
		    [](Napi::Env, uint8_t *, Batch *b) { delete b; }, batch);
	}
	try {
		cb.Call({err, buf, Napi::Number::New(env, count)});
	} catch (const Napi::Error &e) {
		napi_fatal_exception(env, e.Value());
	}
}

Napi::Function Tracer::Init(Napi::Env env)
{
	return DefineClass(env, "Tracer",
			   {
			       InstanceMethod("attach", &Tracer::JS_attach),
			       InstanceMethod("probeAttach", &Tracer::JS_probeAttach),
			       InstanceMethod("pinLinks", &Tracer::JS_pinLinks),
			       InstanceMethod("startEvents", &Tracer::JS_startEvents),
			       InstanceMethod("stopEvents", &Tracer::JS_stopEvents),
			       InstanceMethod("mapInfo", &Tracer::JS_mapInfo),
			       InstanceMethod("mapEntries", &Tracer::JS_mapEntries),
			       InstanceMethod("mapRead", &Tracer::JS_mapRead),
			       InstanceMethod("mapLookup", &Tracer::JS_mapLookup),
			       InstanceMethod("mapUpdate", &Tracer::JS_mapUpdate),
			       InstanceMethod("mapDelete", &Tracer::JS_mapDelete),
			       InstanceMethod("drainStats", &Tracer::JS_drainStats),
			       InstanceMethod("programStats", &Tracer::JS_programStats),
			       InstanceMethod("runProgram", &Tracer::JS_runProgram),
			       InstanceMethod("setGlobal", &Tracer::JS_setGlobal),
			       InstanceMethod("close", &Tracer::JS_close),
			   });
}

// new Tracer(path, { rodata, maxEntries, disabledPrograms, btfPath, log })
// open -> set rodata -> size maps -> choose programs -> load -> check map sizes; each step its own
// error.
Tracer::Tracer(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Tracer>(info)
{
	Napi::Env env = info.Env();
	if (!info[0].IsString())
		throw Napi::TypeError::New(env, "Tracer(path, options): path must be a string");
	std::string path = info[0].As<Napi::String>().Utf8Value();
	Napi::Object opts =
	    info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
	log_ = LogRef(env, opts);

	auto fail = [&](const std::string &op, int err, const std::string &detail) {
		FlushLog(env, *log_);
		if (obj_)
			bpf_object__close(obj_);
		obj_ = nullptr;
		return MakeBpfError(env, op, err, detail);
	};

	// btfPath: the kernel's BTF from a file, for kernels without /sys/kernel/btf/vmlinux
	std::string btf_path;
	if (opts.Has("btfPath") && opts.Get("btfPath").IsString())
		btf_path = opts.Get("btfPath").As<Napi::String>().Utf8Value();
	LIBBPF_OPTS(bpf_object_open_opts, open_opts,
		    .btf_custom_path = btf_path.empty() ? nullptr : btf_path.c_str());
	obj_ = bpf_object__open_file(path.c_str(), &open_opts);
	if (!obj_)
		throw fail("open", errno, path);

	if (opts.Has("rodata") && opts.Get("rodata").IsObject()) {
		Napi::Object ro = opts.Get("rodata").As<Napi::Object>();
		Napi::Array keys = ro.GetPropertyNames();
		for (uint32_t i = 0; i < keys.Length(); i++) {
			std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
			Napi::Value v = ro.Get(k);
			try {
				if (v.IsBuffer()) {
					auto b = v.As<Napi::Buffer<uint8_t>>();
					SetGlobalBytes(env, ".rodata", k, b.Data(), b.Length());
					continue;
				}
				bool lossless;
				uint64_t n = v.IsBigInt()
						 ? v.As<Napi::BigInt>().Uint64Value(&lossless)
						 : (uint64_t)v.ToNumber().Int64Value();
				SetGlobal(env, ".rodata", k, n);
			} catch (...) {
				bpf_object__close(obj_);
				obj_ = nullptr;
				throw;
			}
		}
	}
	if (opts.Has("maxEntries") && opts.Get("maxEntries").IsObject()) {
		Napi::Object me = opts.Get("maxEntries").As<Napi::Object>();
		Napi::Array keys = me.GetPropertyNames();
		for (uint32_t i = 0; i < keys.Length(); i++) {
			std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
			bpf_map *m = bpf_object__find_map_by_name(obj_, k.c_str());
			if (!m)
				throw fail("set_max_entries", ENOENT, "no map named " + k);
			int err = bpf_map__set_max_entries(m, me.Get(k).ToNumber().Uint32Value());
			if (err)
				throw fail("set_max_entries", err, k);
		}
	}
	// pin: { dir, maps }: these maps live at dir/NAME in bpffs. libbpf reuses a pinned
	// map that matches the definition (type, sizes, max_entries) and pins new ones.
	if (opts.Has("pin") && opts.Get("pin").IsObject()) {
		Napi::Object pin = opts.Get("pin").As<Napi::Object>();
		std::string dir = pin.Get("dir").ToString().Utf8Value();
		Napi::Value mv = pin.Get("maps");
		Napi::Array names = mv.IsArray() ? mv.As<Napi::Array>() : Napi::Array::New(env);
		for (uint32_t i = 0; i < names.Length(); i++) {
			std::string n = names.Get(i).ToString().Utf8Value();
			bpf_map *m = bpf_object__find_map_by_name(obj_, n.c_str());
			if (!m)
				throw fail("set_pin_path", ENOENT, "no map named " + n);
			int err = bpf_map__set_pin_path(m, (dir + "/" + n).c_str());
			if (err)
				throw fail("set_pin_path", -err, dir + "/" + n);
		}
	}
	if (opts.Has("disabledPrograms") && opts.Get("disabledPrograms").IsArray()) {
		Napi::Array names = opts.Get("disabledPrograms").As<Napi::Array>();
		for (uint32_t i = 0; i < names.Length(); i++) {
			std::string n = names.Get(i).ToString().Utf8Value();
			bpf_program *p = bpf_object__find_program_by_name(obj_, n.c_str());
			if (!p)
				throw fail("set_autoload", ENOENT, "no program named " + n);
			bpf_program__set_autoload(p, false);
		}
	}

	// onDemandPrograms: loaded but never attached, run by runProgram(). They walk a map
	// with bpf_for_each_map_elem (5.13); on an older kernel they are not loaded at all.
	if (opts.Has("onDemandPrograms") && opts.Get("onDemandPrograms").IsArray()) {
		Napi::Array names = opts.Get("onDemandPrograms").As<Napi::Array>();
		bool walkable = libbpf_probe_bpf_helper(BPF_PROG_TYPE_RAW_TRACEPOINT,
							BPF_FUNC_for_each_map_elem, nullptr) > 0;
		for (uint32_t i = 0; i < names.Length(); i++) {
			std::string n = names.Get(i).ToString().Utf8Value();
			bpf_program *p = bpf_object__find_program_by_name(obj_, n.c_str());
			if (!p)
				throw fail("set_autoattach", ENOENT, "no program named " + n);
			bpf_program__set_autoattach(p, false);
			if (!walkable)
				bpf_program__set_autoload(p, false);
		}
	}

	int err = bpf_object__load(obj_);
	if (err)
		throw fail("load", err, path);
	std::string mismatch = CheckMapSizes(obj_);
	if (!mismatch.empty())
		throw fail("check map sizes", EINVAL, mismatch);
	loaded_ = true;
	FlushLog(env, *log_);
	LiveSet(env)->tracers.insert(this);
	env_ = env;
}

Tracer::~Tracer()
{
	Close();
	delete log_;
}

// Writes a global variable of the BPF object: into the initial image before load
// (.rodata), or into the live map after it (.bss). Offsets come from the BTF datasec.
// The value must be exactly the variable's size.
void Tracer::SetGlobalBytes(Napi::Env env, const char *section, const std::string &var,
			    const uint8_t *bytes, size_t len)
{
	bpf_map *map = nullptr;
	bpf_map *m;
	bpf_object__for_each_map (m, obj_) {
		const char *name = bpf_map__name(m);
		size_t nl = strlen(name), sl = strlen(section);
		if (bpf_map__is_internal(m) && nl >= sl && strcmp(name + nl - sl, section) == 0)
			map = m;
	}
	if (!map)
		throw Napi::Error::New(env,
				       std::string("BPF object has no ") + section + " section");
	const struct btf_var_secinfo *vsi = FindGlobal(env, section, var);
	if (len != vsi->size)
		throw Napi::RangeError::New(env, "global " + var + " is " +
						     std::to_string(vsi->size) + " bytes, got " +
						     std::to_string(len));
	if (!loaded_) {
		size_t sz = 0;
		auto *data = static_cast<const uint8_t *>(bpf_map__initial_value(map, &sz));
		if (!data || vsi->offset + vsi->size > sz)
			throw Napi::Error::New(env, "cannot write global " + var);
		std::vector<uint8_t> image(data, data + sz);
		memcpy(image.data() + vsi->offset, bytes, len);
		if (bpf_map__set_initial_value(map, image.data(), image.size()))
			throw Napi::Error::New(env, "cannot write global " + var);
		return;
	}
	std::vector<uint8_t> buf(bpf_map__value_size(map));
	int zero = 0, fd = bpf_map__fd(map);
	if (bpf_map_lookup_elem(fd, &zero, buf.data()))
		throw MakeBpfError(env, std::string("read ") + section, errno);
	memcpy(buf.data() + vsi->offset, bytes, len);
	if (bpf_map_update_elem(fd, &zero, buf.data(), BPF_ANY))
		throw MakeBpfError(env, std::string("write ") + section, errno);
}

// A scalar global: the low bytes of value (little-endian), as many as the variable has.
void Tracer::SetGlobal(Napi::Env env, const char *section, const std::string &var, uint64_t value)
{
	size_t size = GlobalSize(env, section, var);
	if (size > 8)
		throw Napi::Error::New(env, "global " + var + " is not a scalar");
	SetGlobalBytes(env, section, var, reinterpret_cast<const uint8_t *>(&value), size);
}

size_t Tracer::GlobalSize(Napi::Env env, const char *section, const std::string &var)
{
	return FindGlobal(env, section, var)->size;
}

// The BTF datasec entry (offset, size) of a global variable.
const struct btf_var_secinfo *Tracer::FindGlobal(Napi::Env env, const char *section,
						 const std::string &var)
{
	const struct btf *btf = bpf_object__btf(obj_);
	int id = btf ? btf__find_by_name_kind(btf, section, BTF_KIND_DATASEC) : -1;
	if (id < 0)
		throw Napi::Error::New(env,
				       std::string("BPF object has no ") + section + " section");
	const struct btf_type *sec = btf__type_by_id(btf, id);
	const struct btf_var_secinfo *vsi = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vsi++) {
		const struct btf_type *vt = btf__type_by_id(btf, vsi->type);
		if (var == btf__name_by_offset(btf, vt->name_off))
			return vsi;
	}
	throw Napi::Error::New(env, "the BPF object has no global named " + var + " in " + section);
}

// setGlobal(name, value): change a .bss setting of the loaded program.
Napi::Value Tracer::JS_setGlobal(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_ || !loaded_)
		throw Napi::Error::New(env, "tracer is closed");
	if (!info[0].IsString())
		throw Napi::TypeError::New(env, "setGlobal(name, value): name must be a string");
	Napi::Value v = info[1];
	bool lossless;
	uint64_t n = v.IsBigInt() ? v.As<Napi::BigInt>().Uint64Value(&lossless)
				  : (uint64_t)v.ToNumber().Int64Value();
	SetGlobal(env, ".bss", info[0].As<Napi::String>().Utf8Value(), n);
	return env.Undefined();
}

// One program's attach result: { name, section, attached, error?, errno?, code?, hint? }.
// The link, when there is one, goes to *link.
Napi::Object Tracer::AttachProgram(Napi::Env env, bpf_program *prog, bpf_link **link)
{
	Napi::Object r = Napi::Object::New(env);
	std::string sec = bpf_program__section_name(prog);
	r.Set("name", bpf_program__name(prog));
	r.Set("section", sec);
	*link = nullptr;
	if (!bpf_program__autoload(prog)) {
		r.Set("attached", false);
		r.Set("error", "disabled by configuration");
		return r;
	}
	*link = bpf_program__attach(prog);
	if (*link) {
		r.Set("attached", true);
		return r;
	}
	int err = errno;
	Napi::Error e = MakeBpfError(env, "attach " + sec, err);
	r.Set("attached", false);
	r.Set("error", e.Message());
	r.Set("errno", err);
	r.Set("code", e.Value().Get("code"));
	if (e.Value().Has("hint"))
		r.Set("hint", e.Value().Get("hint"));
	return r;
}

// attach() -> [{ name, section, attached, error?, errno?, hint? }], one per program.
Napi::Value Tracer::JS_attach(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	if (attached_)
		throw Napi::Error::New(env, "attach() was already called");
	attached_ = true;
	Napi::Array out = Napi::Array::New(env);
	bpf_program *prog;
	uint32_t i = 0;
	bpf_object__for_each_program (prog, obj_) {
		bpf_link *link;
		if (!bpf_program__autoattach(prog))
			continue; // run on demand (runProgram)
		out.Set(i++, AttachProgram(env, prog, &link));
		if (link) {
			links_.push_back(link);
			link_names_.push_back(bpf_program__name(prog));
		}
	}
	FlushLog(env, *log_);
	return out;
}

// pinLinks(dir): pin the link of every attached program at dir/PROGRAM in bpffs, so
// the programs stay attached after this process exits, until the pins are removed.
Napi::Value Tracer::JS_pinLinks(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	if (!info[0].IsString())
		throw Napi::TypeError::New(env, "pinLinks(dir): dir must be a string");
	std::string dir = info[0].As<Napi::String>().Utf8Value();
	for (size_t i = 0; i < links_.size(); i++) {
		std::string path = dir + "/" + link_names_[i];
		int err = bpf_link__pin(links_[i], path.c_str());
		if (err) {
			FlushLog(env, *log_);
			throw MakeBpfError(env, "pin link", -err, path);
		}
	}
	return env.Undefined();
}

// probeAttach(name) -> the attach() status of one program, which is detached again
// at once: whether this kernel lets it attach, decided by attaching it.
Napi::Value Tracer::JS_probeAttach(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	if (attached_)
		throw Napi::Error::New(env, "probeAttach() after attach()");
	if (!info[0].IsString())
		throw Napi::TypeError::New(env, "probeAttach(name): name must be a string");
	std::string name = info[0].As<Napi::String>().Utf8Value();
	bpf_program *prog = bpf_object__find_program_by_name(obj_, name.c_str());
	if (!prog)
		throw MakeBpfError(env, "probe attach", ENOENT, "no program named " + name);
	bpf_link *link;
	Napi::Object r = AttachProgram(env, prog, &link);
	if (link)
		bpf_link__destroy(link);
	FlushLog(env, *log_);
	return r;
}

// startEvents(callback(err, buffer, count), { maxQueue, maxBatch })
Napi::Value Tracer::JS_startEvents(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	if (running_)
		throw Napi::Error::New(env, "events are already being drained");
	if (drain_.joinable()) // the drain thread ended on an error: finish it first
		StopEvents();
	if (!info[0].IsFunction())
		throw Napi::TypeError::New(
		    env, "startEvents(callback, options): callback must be a function");
	Napi::Object opts =
	    info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
	size_t max_queue =
	    opts.Has("maxQueue") ? opts.Get("maxQueue").ToNumber().Uint32Value() : 64;
	max_batch_ = opts.Has("maxBatch") ? opts.Get("maxBatch").ToNumber().Uint32Value() : 4096;
	if (max_queue == 0 || max_batch_ == 0)
		throw Napi::RangeError::New(env, "maxQueue and maxBatch must be positive");

	formatter_.reset();
	out_.clear();
	out_count_ = 0;
	out_failed_ = false;
	out_errno_ = 0;
	if (opts.Has("output") && opts.Get("output").IsObject()) {
		// output: { fd, json, timestamp, verbose, netnsFiltered, preamble }: the drain
		// thread prints
		Napi::Object o = opts.Get("output").As<Napi::Object>();
		auto flag = [&](const char *k) { return o.Has(k) && o.Get(k).ToBoolean().Value(); };
		if (!o.Get("fd").IsNumber() || o.Get("fd").As<Napi::Number>().Int32Value() < 0)
			throw Napi::TypeError::New(
			    env, "startEvents: output.fd must be a file descriptor");
		FormatOptions fo;
		fo.json = flag("json");
		fo.timestamp = flag("timestamp");
		fo.verbose = flag("verbose");
		fo.netns_filtered = flag("netnsFiltered");
		OpenOutput(o.Get("fd").As<Napi::Number>().Int32Value());
		formatter_ = std::make_unique<EventFormatter>(fo);
		out_.reserve(kOutputChunk + 4096);
		// preamble: written first, once events are enabled (the banner and the column
		// header)
		if (o.Has("preamble") && o.Get("preamble").IsString())
			out_ = o.Get("preamble").As<Napi::String>().Utf8Value();
	}

	if (!rb_) {
		bpf_map *events = bpf_object__find_map_by_name(obj_, "events");
		if (!events)
			throw Napi::Error::New(env, "the BPF object has no events ring buffer");
		rb_ = ring_buffer__new(bpf_map__fd(events), &Tracer::OnRecord, this, nullptr);
		if (!rb_) {
			FlushLog(env, *log_);
			throw MakeBpfError(env, "ring_buffer__new", errno);
		}
	}
	tsfn_ = BatchTsfn::New(env, info[0].As<Napi::Function>(), "tcptracer-drain", max_queue, 1);
	try {
		SetGlobal(env, ".bss", "events_enabled", 1);
		stopping_ = false;
		running_ = true;
		drain_ = std::thread(&Tracer::DrainLoop, this);
	} catch (...) {
		// without a drain thread nothing may keep the event loop alive
		running_ = false;
		tsfn_.Release();
		throw;
	}
	return env.Undefined();
}

// Drain thread: hand one batch to JS. While JS is behind (its queue of batches is full), wait for
// room rather than drop: meanwhile the drain thread reads nothing, so new records wait in the
// kernel's ring buffer, and only when that fills too are they lost, counted by the programs
// (STAT_EVENTS_LOST). A batch is dropped, and counted, only when events are being stopped: the
// JS thread then waits for this thread and takes no more batches.
void Tracer::Deliver(Batch *b)
{
	uint32_t n = b->count;
	for (;;) {
		napi_status st = tsfn_.NonBlockingCall(b);
		if (st == napi_ok) {
			delivered_ += n;
			batches_++;
			return;
		}
		if (st != napi_queue_full || stopping_.load())
			break;
		std::this_thread::sleep_for(std::chrono::milliseconds(1));
	}
	dropped_ += n;
	delete b;
}

// Drain thread: poll with a 100 ms timeout so a stop request is seen promptly, and hand each
// poll's records to JS as one batch (Deliver).
void Tracer::DrainLoop()
{
	pthread_setname_np(pthread_self(), "tcptracer-drain");
	batch_ = new Batch();
	if (formatter_ && !out_.empty()) // the preamble
		Flush();
	while (running_.load() && !out_failed_) {
		int n = ring_buffer__poll(rb_, 100);
		if (n < 0 && n != -EINTR) {
			Fail("ring_buffer__poll", -n);
			break;
		}
		if (formatter_) {
			Flush();
		} else if (batch_->count) {
			Deliver(batch_);
			batch_ = new Batch();
		}
	}
	ring_buffer__consume(rb_); // what was submitted before events_enabled went to 0
	if (formatter_) {
		Flush();
		delete batch_;
	} else if (batch_->count) {
		Deliver(batch_);
	} else {
		delete batch_;
	}
	batch_ = nullptr;
}

// Drain thread: a fatal error, for JS's error callback; the thread then ends.
void Tracer::Fail(const char *op, int err)
{
	Batch *e = new Batch();
	e->err = err;
	e->op = op;
	Deliver(e);
	running_ = false;
}

// Output mode, at startEvents: a pipe or a terminal is reopened (/proc/self/fd/N) as a description
// of its own with O_NONBLOCK, so that a reader that stops reading cannot block the drain thread
// inside write(), and the shell's description stays as it was. A file or /dev/null takes writes
// without waiting on a reader. A socket, or a pipe that cannot be reopened, is written at most
// PIPE_BUF bytes at a time once poll() says it has room, which never blocks.
void Tracer::OpenOutput(int fd)
{
	out_fd_ = fd;
	out_owned_ = false;
	out_small_writes_ = false;
	struct stat st;
	if (fstat(fd, &st) != 0)
		return; // the first write reports it
	bool pipe_like = S_ISFIFO(st.st_mode) || isatty(fd);
	if (pipe_like) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		int own = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (own >= 0) {
			out_fd_ = own;
			out_owned_ = true;
			return;
		}
	}
	if (pipe_like || S_ISSOCK(st.st_mode))
		out_small_writes_ = !(fcntl(fd, F_GETFL) & O_NONBLOCK);
}

// Drain thread, output mode: write what was formatted. While the output cannot take more (a reader
// that is behind), wait: new records wait in the ring buffer meanwhile, as they do for a slow JS
// consumer. At a stop, give up after 2 s without progress. On a failed write (EPIPE included) or
// that give-up, the rest is counted as dropped (GiveUp) and the thread ends.
void Tracer::Flush()
{
	size_t off = 0;
	int idle_ms = 0;
	while (off < out_.size() && !out_failed_) {
		size_t n = out_.size() - off;
		if (out_small_writes_) {
			struct pollfd p = {out_fd_, POLLOUT, 0};
			if (poll(&p, 1, 100) <= 0) {
				idle_ms += 100;
				if (stopping_.load() && idle_ms >= 2000)
					GiveUp(off, 0);
				continue;
			}
			n = std::min(n, static_cast<size_t>(PIPE_BUF));
		}
		ssize_t w = write(out_fd_, out_.data() + off, n);
		if (w > 0) {
			off += static_cast<size_t>(w);
			idle_ms = 0;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && errno == EAGAIN) {
			struct pollfd p = {out_fd_, POLLOUT, 0};
			poll(&p, 1, 100);
			idle_ms += 100;
			if (stopping_.load() && idle_ms >= 2000)
				GiveUp(off, 0);
		} else {
			GiveUp(off, w < 0 ? errno : EIO);
		}
	}
	if (out_failed_)
		return;
	delivered_ += out_count_;
	if (out_count_)
		batches_++;
	out_.clear();
	out_count_ = 0;
}

// Drain thread: the output failed (`err`) or, at a stop, took nothing for 2 s (`err` 0). The lines
// written so far are delivered, the rest dropped, and so is every record after (OnRecord). A
// failure while running goes to the error callback; drainStats() reports it either way
// (outputErrno).
void Tracer::GiveUp(size_t written, int err)
{
	auto lines = static_cast<uint64_t>(std::count(out_.begin(), out_.begin() + written, '\n'));
	delivered_ += lines;
	dropped_ += out_count_ - lines;
	out_.clear();
	out_count_ = 0;
	out_failed_ = true;
	if (err) {
		out_errno_ = err;
		if (!stopping_.load())
			Fail("write", err);
	}
}

// Drain thread (inside ring_buffer__poll): append one record to the current batch, or in output
// mode format it.
int Tracer::OnRecord(void *ctx, void *data, size_t size)
{
	auto *self = static_cast<Tracer *>(ctx);
	if (size != sizeof(struct event)) {
		self->malformed_++;
		return 0;
	}
	if (self->formatter_) {
		if (self->out_failed_) {
			self->dropped_++;
			return 0;
		}
		struct event e;
		memcpy(&e, data, sizeof(e));
		if (!self->formatter_->Append(self->out_, e)) {
			self->malformed_++;
			return 0;
		}
		self->out_count_++;
		if (self->out_.size() >= kOutputChunk)
			self->Flush(); // a full chunk; should it fail, the records after it are
				       // dropped
		return 0;
	}
	Batch *b = self->batch_;
	if (!b->data.capacity())
		b->data.reserve(std::min<size_t>(self->max_batch_, 256) * sizeof(struct event));
	auto *p = static_cast<uint8_t *>(data);
	b->data.insert(b->data.end(), p, p + size);
	b->count++;
	if (b->count >= self->max_batch_) {
		self->Deliver(b);
		self->batch_ = new Batch();
	}
	return 0;
}

void Tracer::StopEvents()
{
	if (!running_.load() && !drain_.joinable())
		return;
	if (obj_ && loaded_ && !env_.IsExceptionPending()) {
		try {
			SetGlobal(env_, ".bss", "events_enabled", 0);
		} catch (...) {
			// closing anyway: the ring buffer is freed below
		}
	}
	stopping_ = true;
	running_ = false;
	if (drain_.joinable())
		drain_.join();
	tsfn_.Release();
	if (out_owned_)
		close(out_fd_);
	out_owned_ = false;
	out_fd_ = -1;
}

Napi::Value Tracer::JS_stopEvents(const Napi::CallbackInfo &info)
{
	StopEvents();
	return info.Env().Undefined();
}

void Tracer::Close()
{
	StopEvents();
	for (bpf_link *l : links_)
		bpf_link__destroy(l);
	links_.clear();
	link_names_.clear();
	if (rb_)
		ring_buffer__free(rb_);
	rb_ = nullptr;
	if (obj_) {
		bpf_object__close(obj_);
		obj_ = nullptr;
		Live *live = env_ ? env_.GetInstanceData<Live>() : nullptr;
		if (live)
			live->tracers.erase(this);
	}
}

Napi::Value Tracer::JS_close(const Napi::CallbackInfo &info)
{
	Close();
	return info.Env().Undefined();
}

// programStats() -> [{ name, recursionMisses }] for each loaded program: runs the kernel
// skipped because the program was already running on that CPU (bpf_prog_info, 5.12+).
Napi::Value Tracer::JS_programStats(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	Napi::Array out = Napi::Array::New(env);
	bpf_program *prog;
	uint32_t i = 0;
	bpf_object__for_each_program (prog, obj_) {
		int fd = bpf_program__fd(prog);
		if (fd < 0 || !bpf_program__autoattach(prog))
			continue;
		struct bpf_prog_info pi;
		__u32 len = sizeof(pi);
		memset(&pi, 0, sizeof(pi));
		if (bpf_obj_get_info_by_fd(fd, &pi, &len))
			throw MakeBpfError(env, "prog info", errno, bpf_program__name(prog));
		Napi::Object r = Napi::Object::New(env);
		r.Set("name", bpf_program__name(prog));
		r.Set("recursionMisses",
		      Napi::BigInt::New(env, static_cast<uint64_t>(pi.recursion_misses)));
		out.Set(i++, r);
	}
	return out;
}

// runProgram(name) -> its return value: run an on-demand program once, on this CPU
// (BPF_PROG_TEST_RUN). Throws when the program is not loaded (its kernel lacks what it
// needs) or the kernel refuses the run.
Napi::Value Tracer::JS_runProgram(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (!obj_ || !loaded_)
		throw Napi::Error::New(env, "tracer is closed");
	if (!info[0].IsString())
		throw Napi::TypeError::New(env, "runProgram(name): name must be a string");
	std::string name = info[0].As<Napi::String>().Utf8Value();
	bpf_program *prog = bpf_object__find_program_by_name(obj_, name.c_str());
	if (!prog)
		throw MakeBpfError(env, "run program", ENOENT, "no program named " + name);
	int fd = bpf_program__fd(prog);
	if (fd < 0)
		throw MakeBpfError(env, "run program", ENOENT, name + " is not loaded");
	LIBBPF_OPTS(bpf_test_run_opts, opts);
	if (bpf_prog_test_run_opts(fd, &opts))
		throw MakeBpfError(env, "run program", errno, name);
	return Napi::Number::New(env, opts.retval);
}

Napi::Value Tracer::JS_drainStats(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	Napi::Object o = Napi::Object::New(env);
	o.Set("delivered", Napi::BigInt::New(env, delivered_.load()));
	o.Set("dropped", Napi::BigInt::New(env, dropped_.load()));
	o.Set("malformed", Napi::BigInt::New(env, malformed_.load()));
	o.Set("batches", Napi::BigInt::New(env, batches_.load()));
	o.Set("running", running_.load());
	// output mode: the errno of a failed write (EPIPE: the reader went away), 0 if none
	o.Set("outputErrno", Napi::Number::New(env, out_errno_.load()));
	return o;
}

bpf_map *Tracer::FindMap(Napi::Env env, const Napi::Value &name)
{
	if (!obj_)
		throw Napi::Error::New(env, "tracer is closed");
	std::string n = MapName(name);
	bpf_map *m = bpf_object__find_map_by_name(obj_, n.c_str());
	if (!m)
		throw Napi::Error::New(env, "the BPF object has no map named " + n);
	return m;
}

Napi::Value Tracer::JS_mapInfo(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	Napi::Object o = Napi::Object::New(env);
	o.Set("type", static_cast<int>(bpf_map__type(m)));
	o.Set("keySize", bpf_map__key_size(m));
	o.Set("valueSize", bpf_map__value_size(m));
	o.Set("valueBytes", ValueBytes(m));
	o.Set("maxEntries", bpf_map__max_entries(m));
	return o;
}

// Where a map walk puts what it reads: Room(want) gives space for up to `want` entries (keys,
// values and how many fit: fewer when the caller's space is nearly full, 0 when it is full), and
// Took(count) is told how many entries the walk put there.
struct MapSpace {
	uint8_t *keys;
	uint8_t *vals;
	size_t n;
};

// The walk behind mapEntries and mapRead: the kernel's batch lookup, which walks a hash map
// bucket by bucket and so neither repeats nor skips entries when others are deleted meanwhile;
// get_next_key where batching is unsupported. Returns false when Room ran out of space.
template <typename Room, typename Took>
static bool WalkMap(Napi::Env env, bpf_map *m, Room room, Took took)
{
	int fd = bpf_map__fd(m);
	size_t ks = bpf_map__key_size(m);
	size_t chunk = std::max<uint32_t>(64, std::min<uint32_t>(bpf_map__max_entries(m), 4096));
	std::vector<uint8_t> in(std::max<size_t>(ks, 8)), outb(std::max<size_t>(ks, 8));
	bool first = true;
	for (;;) {
		MapSpace sp = room(chunk);
		if (sp.n == 0)
			return false;
		uint32_t count = static_cast<uint32_t>(sp.n);
		LIBBPF_OPTS(bpf_map_batch_opts, bo);
		int err = bpf_map_lookup_batch(fd, first ? nullptr : in.data(), outb.data(),
					       sp.keys, sp.vals, &count, &bo);
		int e = err ? errno : 0;
		if (err && e == ENOSPC && count == 0) { // a bucket larger than the space given
			if (sp.n < chunk)
				return false; // the caller's space, not the chunk, was the limit
			chunk *= 2;
			continue;
		}
		if (err && e != ENOENT) {
			// 524 is the kernel's internal ENOTSUPP, returned for maps without batch
			// ops
			if (first && (e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP || e == 524))
				break;
			throw MakeBpfError(env, "map lookup_batch " + std::string(bpf_map__name(m)),
					   e);
		}
		took(count);
		if (err) // ENOENT: that was the last batch
			return true;
		in = outb;
		first = false;
	}

	std::vector<uint8_t> key(ks), next(ks);
	void *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
		MapSpace sp = room(1);
		if (sp.n == 0)
			return false;
		if (bpf_map_lookup_elem(fd, next.data(), sp.vals) == 0) {
			std::memcpy(sp.keys, next.data(), ks);
			took(1);
		}
		key = next;
		prev = key.data();
	}
	return true;
}

// mapEntries(name) -> [{ key, value }], every entry, in the order of WalkMap.
Napi::Value Tracer::JS_mapEntries(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	size_t ks = bpf_map__key_size(m), vs = ValueBytes(m);
	Napi::Array out = Napi::Array::New(env);
	uint32_t idx = 0;
	std::vector<uint8_t> keys, vals;
	WalkMap(
	    env, m,
	    [&](size_t want) {
		    keys.resize(want * ks);
		    vals.resize(want * vs);
		    return MapSpace{keys.data(), vals.data(), want};
	    },
	    [&](size_t count) {
		    for (size_t i = 0; i < count; i++) {
			    Napi::Object e = Napi::Object::New(env);
			    e.Set("key", Napi::Buffer<uint8_t>::Copy(env, &keys[i * ks], ks));
			    e.Set("value", Napi::Buffer<uint8_t>::Copy(env, &vals[i * vs], vs));
			    out.Set(idx++, e);
		    }
	    });
	return out;
}

// mapRead(name, keys, values) -> count, or -1. The walk of mapEntries, but into the caller's
// Buffers and without an object per entry: entry i's key at keys[i * keySize] and its value at
// values[i * valueBytes]. -1 when the Buffers cannot hold every entry (a full Buffer counts as too
// small): grow them and call again. A scrape reads the aggregation map this way.
Napi::Value Tracer::JS_mapRead(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	if (!info[1].IsBuffer() || !info[2].IsBuffer())
		throw Napi::TypeError::New(env, "mapRead(name, keys, values): keys and values must "
						"be Buffers");
	auto kb = info[1].As<Napi::Buffer<uint8_t>>();
	auto vb = info[2].As<Napi::Buffer<uint8_t>>();
	size_t ks = bpf_map__key_size(m), vs = ValueBytes(m);
	size_t cap = std::min(kb.Length() / ks, vb.Length() / vs);
	size_t n = 0;
	bool all = WalkMap(
	    env, m,
	    [&](size_t want) {
		    return MapSpace{kb.Data() + n * ks, vb.Data() + n * vs,
				    std::min(want, cap - n)};
	    },
	    [&](size_t count) { n += count; });
	return Napi::Number::New(env, all ? static_cast<double>(n) : -1);
}

Napi::Value Tracer::JS_mapLookup(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	auto key = BufferBytes(info[1], bpf_map__key_size(m), "key");
	std::vector<uint8_t> val(ValueBytes(m));
	if (bpf_map_lookup_elem(bpf_map__fd(m), key.data(), val.data())) {
		if (errno == ENOENT)
			return env.Null();
		throw MakeBpfError(env, std::string("map lookup ") + bpf_map__name(m), errno);
	}
	return Napi::Buffer<uint8_t>::Copy(env, val.data(), val.size());
}

// mapUpdate(name, key, value, flags) -> true, or false when flags is BPF_NOEXIST
// and the key exists.
Napi::Value Tracer::JS_mapUpdate(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	auto key = BufferBytes(info[1], bpf_map__key_size(m), "key");
	auto val = BufferBytes(info[2], ValueBytes(m), "value");
	uint64_t flags = info[3].IsNumber() ? info[3].ToNumber().Int64Value() : uint64_t{BPF_ANY};
	if (bpf_map_update_elem(bpf_map__fd(m), key.data(), val.data(), flags)) {
		if (errno == EEXIST && flags == BPF_NOEXIST)
			return Napi::Boolean::New(env, false);
		throw MakeBpfError(env, std::string("map update ") + bpf_map__name(m), errno);
	}
	return Napi::Boolean::New(env, true);
}

Napi::Value Tracer::JS_mapDelete(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	bpf_map *m = FindMap(env, info[0]);
	auto key = BufferBytes(info[1], bpf_map__key_size(m), "key");
	if (bpf_map_delete_elem(bpf_map__fd(m), key.data())) {
		if (errno == ENOENT)
			return Napi::Boolean::New(env, false);
		throw MakeBpfError(env, std::string("map delete ") + bpf_map__name(m), errno);
	}
	return Napi::Boolean::New(env, true);
}

} // namespace tcptracer
