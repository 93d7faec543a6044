// SPDX-License-Identifier: Apache-2.0
// The systemd notify protocol, from its description: one datagram of
// newline-separated KEY=VALUE assignments, sent to the AF_UNIX SOCK_DGRAM socket
// named by $NOTIFY_SOCKET. A leading '@' names a socket in the abstract
// namespace, whose address starts with a NUL byte and whose length is exactly
// the bytes of the name (not sizeof(struct sockaddr_un)).
#include "sd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tcptracer
{

namespace
{

const char *ErrnoCode(int err)
{
	switch (err) {
	case EPERM:
		return "EPERM";
	case ENOENT:
		return "ENOENT";
	case EINTR:
		return "EINTR";
	case EAGAIN:
		return "EAGAIN";
	case ENOMEM:
		return "ENOMEM";
	case EACCES:
		return "EACCES";
	case ENOTDIR:
		return "ENOTDIR";
	case EINVAL:
		return "EINVAL";
	case ENFILE:
		return "ENFILE";
	case EMFILE:
		return "EMFILE";
	case ENAMETOOLONG:
		return "ENAMETOOLONG";
	case ELOOP:
		return "ELOOP";
	case ENOTSOCK:
		return "ENOTSOCK";
	case EMSGSIZE:
		return "EMSGSIZE";
	case EPROTOTYPE:
		return "EPROTOTYPE";
	case ENOBUFS:
		return "ENOBUFS";
	case ECONNREFUSED:
		return "ECONNREFUSED";
	default:
		return "";
	}
}

// An Error shaped like the addon's BpfError (op, errno, code) but without its
// BPF-specific hints, which would be wrong here.
Napi::Error NotifyError(Napi::Env env, int err, const std::string &what)
{
	std::string msg = "sd_notify failed: " + what + ": " + std::strerror(err);
	Napi::Error e = Napi::Error::New(env, msg);
	Napi::Object o = e.Value();
	o.Set("op", "sd_notify");
	o.Set("errno", err);
	o.Set("code", ErrnoCode(err));
	return e;
}

} // namespace

Napi::Value SdNotify(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (info.Length() < 1 || !info[0].IsString())
		throw Napi::TypeError::New(env, "sdNotify(state): state must be a string");
	std::string state = info[0].As<Napi::String>().Utf8Value();

	const char *name = getenv("NOTIFY_SOCKET");
	if (name == nullptr || name[0] == '\0')
		return Napi::Boolean::New(env, false);
	std::string where = std::string("NOTIFY_SOCKET=") + name;

	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	size_t len = strlen(name);
	socklen_t salen;
	if (name[0] == '@') {
		// The '@' becomes the leading NUL; the name is not NUL-terminated.
		if (len < 2)
			throw NotifyError(env, EINVAL, where + " names an empty abstract socket");
		if (len > sizeof(sa.sun_path))
			throw NotifyError(env, ENAMETOOLONG,
					  where + " is longer than the " +
					      std::to_string(sizeof(sa.sun_path)) +
					      " bytes a socket address holds");
		memcpy(sa.sun_path + 1, name + 1, len - 1);
		salen = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + len);
	} else if (name[0] == '/') {
		// A path needs room for its terminating NUL.
		if (len >= sizeof(sa.sun_path))
			throw NotifyError(env, ENAMETOOLONG,
					  where + " is longer than the " +
					      std::to_string(sizeof(sa.sun_path) - 1) +
					      " bytes a socket path may have");
		memcpy(sa.sun_path, name, len);
		salen = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + len + 1);
	} else {
		throw NotifyError(env, EINVAL,
				  where +
				      " is neither an absolute path nor an abstract socket name "
				      "starting with '@'");
	}

	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		throw NotifyError(env, errno, "socket(AF_UNIX, SOCK_DGRAM)");

	// Never block the event loop on a receiver that does not read: a full
	// queue is reported as EAGAIN instead.
	ssize_t n;
	do {
		n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
			   reinterpret_cast<const struct sockaddr *>(&sa), salen);
	} while (n < 0 && errno == EINTR);
	int err = errno;
	close(fd);
	if (n < 0)
		throw NotifyError(env, err, "sendto(" + where + ")");
	if (static_cast<size_t>(n) != state.size())
		throw NotifyError(env, EMSGSIZE,
				  "sendto(" + where + ") sent " + std::to_string(n) + " of " +
				      std::to_string(state.size()) + " bytes");
	return Napi::Boolean::New(env, true);
}

} // namespace tcptracer
