/* lh-agent: the guest side of the harness's command channel (harness/channel.py).
 *
 * Started by the harness's /init on the virtio console: `lh-agent /dev/hvc0 &`.  It makes the
 * tty raw, says it is ready, and serves one request at a time:
 *
 *   host -> guest  text lines (printable ASCII, so no tty or console device can eat a byte),
 *                  payloads in base64:
 *       H <nonce>                      hello: answered with an H frame "<nonce> 1"
 *       C <id> <b64 command> <i|n>     run; i: stdin follows as I lines and a Z line
 *       I <id> <b64 data>              stdin (or put) data
 *       D <id> <b64 data>              put data
 *       Z <id>                         end of stdin / of put data
 *       K <id>                         kill the running command (a timeout on the host)
 *       P <id> <b64 path> <size> <mode octal>    put a file
 *       G <id> <b64 path>              get a file
 *   guest -> host  binary frames: "\0LH" type, u32 id, u32 length, u32 crc32 (over the first
 *                  12 header bytes and the payload), payload (at most MAX_PAYLOAD bytes):
 *       R ready   H hello   O stdout   E stderr   X exit status (decimal; "k<status>": killed)
 *       A put accepted   F failed (message)   S get size (decimal)   D get data
 *       L log (the agent's own or the shell's diagnostics)   P protocol error (message)
 *
 * Commands run in one persistent interactive /bin/sh (no fork per command: a fork+exec costs
 * ~0.8 s where guest kernel code is emulated).  Each command gets fresh pipes for stdin,
 * stdout and stderr, which the shell opens through /proc/<agent>/fd/N, so output a background
 * process writes later can never reach another command; its end is a status line the shell
 * writes to fd 8, a pipe of its own.  A killed command takes the shell with it (its process
 * group); a new one is started.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAX_PAYLOAD 65536
#define MAX_LINE (256 * 1024)
#define STATUS_FD 8
#define PUT_RESERVE (8u << 20)   /* leave the guest this much memory after a put */

static int dev = -1;
static pid_t shell_pid = -1;
static int shell_in = -1, shell_status = -1, shell_noise = -1;

/* the one request in progress */
enum { IDLE, RUNNING, PUTTING } state = IDLE;
static uint32_t cur_id;
static int cmd_out = -1, cmd_err = -1, cmd_in = -1;      /* agent's ends */
static int cmd_out_w = -1, cmd_err_w = -1, cmd_in_r = -1; /* the shell opens these */
static char *in_buf; static size_t in_len, in_off; static int in_eof;
static int put_fd = -1, put_failed; static uint64_t put_size, put_done;
static char status_buf[256]; static size_t status_len;

/* -- frames ------------------------------------------------------------------------------- */
static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static void write_all(int fd, const void *data, size_t n)
{
	const char *p = data;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { fd, POLLOUT, 0 };
				poll(&pfd, 1, -1);
				continue;
			}
			_exit(3);        /* the channel is gone: nothing left to serve */
		}
		p += w;
		n -= w;
	}
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static void frame(char type, uint32_t id, const void *payload, size_t len)
{
	static unsigned char buf[16 + MAX_PAYLOAD];
	const char *p = payload;
	do {
		size_t n = len > MAX_PAYLOAD ? MAX_PAYLOAD : len;
		buf[0] = 0; buf[1] = 'L'; buf[2] = 'H'; buf[3] = type;
		put32(buf + 4, id);
		put32(buf + 8, n);
		memcpy(buf + 16, p, n);
		uint32_t crc = crc32_update(0, buf, 12);
		crc = crc32_update(crc, buf + 16, n);
		put32(buf + 12, crc);
		write_all(dev, buf, 16 + n);
		p += n;
		len -= n;
	} while (len);
}

static void framef(char type, uint32_t id, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	frame(type, id, msg, n < 0 ? 0 : (size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n);
}

/* -- base64 ------------------------------------------------------------------------------- */
static signed char b64_value[256];

static void b64_init(void)
{
	const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	memset(b64_value, -1, sizeof b64_value);
	for (int i = 0; i < 64; i++)
		b64_value[(unsigned char)alphabet[i]] = i;
}

/* Decodes in place; "-" is empty.  Returns the length, or -1 for bad input. */
static long b64_decode(char *s)
{
	if (!strcmp(s, "-"))
		return 0;
	size_t n = strlen(s), out = 0;
	if (n % 4)
		return -1;
	unsigned char *o = (unsigned char *)s;
	for (size_t i = 0; i < n; i += 4) {
		int pad = 0, v[4];
		for (int k = 0; k < 4; k++) {
			unsigned char c = s[i + k];
			if (c == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad || (v[k] = b64_value[c]) < 0) {
				return -1;
			}
		}
		uint32_t bits = v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
		o[out++] = bits >> 16;
		if (pad < 2)
			o[out++] = bits >> 8;
		if (pad < 1)
			o[out++] = bits;
	}
	return out;
}

/* -- the shell ------------------------------------------------------------------------------ */
static void set_oom_adj(const char *value)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, value, strlen(value)) < 0) {}
		close(fd);
	}
}

static void start_shell(void)
{
	int in[2], status[2], noise[2];
	if (pipe2(in, O_CLOEXEC) || pipe2(status, O_CLOEXEC) || pipe2(noise, O_CLOEXEC)) {
		framef('L', 0, "lh-agent: pipe: %s", strerror(errno));
		_exit(4);
	}
	shell_pid = fork();
	if (shell_pid == 0) {
		setsid();                       /* its own process group: a kill takes it all */
		set_oom_adj("0");
		dup2(in[0], 0);
		dup2(noise[1], 1);
		dup2(noise[1], 2);
		dup2(status[1], STATUS_FD);
		setenv("PS1", "", 1);
		setenv("PS2", "", 1);
		unsetenv("ENV");
		execl("/bin/sh", "sh", "-i", "-s", (char *)NULL);
		_exit(127);
	}
	close(in[0]); close(status[1]); close(noise[1]);
	shell_in = in[1]; shell_status = status[0]; shell_noise = noise[0];
	fcntl(shell_status, F_SETFL, O_NONBLOCK);
	fcntl(shell_noise, F_SETFL, O_NONBLOCK);
	status_len = 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* forward what is in fd now (non-blocking) as frames of `type`; returns 0 at EOF */
static int forward(int fd, char type, uint32_t id)
{
	static char buf[MAX_PAYLOAD];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n > 0) {
			frame(type, id, buf, n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n == 0 ? 0 : 1;
	}
}

static void end_command(const char *status)
{
	forward(cmd_out, 'O', cur_id);
	forward(cmd_err, 'E', cur_id);
	close_fd(&cmd_out); close_fd(&cmd_err); close_fd(&cmd_in);
	close_fd(&cmd_out_w); close_fd(&cmd_err_w); close_fd(&cmd_in_r);
	free(in_buf); in_buf = NULL; in_len = in_off = 0; in_eof = 0;
	frame('X', cur_id, status, strlen(status));
	state = IDLE;
}

static int pipe_pair(int *reader, int *writer, int nonblock_end)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC))
		return -1;
	*reader = p[0]; *writer = p[1];
	fcntl(nonblock_end ? p[1] : p[0], F_SETFL, O_NONBLOCK);
	return 0;
}

/* single-quote s for the shell */
static char *quoted(const char *s, size_t n)
{
	char *q = malloc(n * 4 + 3), *o = q;
	*o++ = '\'';
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\'') {
			memcpy(o, "'\\''", 4);
			o += 4;
		} else {
			*o++ = s[i];
		}
	}
	*o++ = '\'';
	*o = 0;
	return q;
}

static void run_command(uint32_t id, char *cmd, long len, int with_input)
{
	cur_id = id;
	if (pipe_pair(&cmd_out, &cmd_out_w, 0) || pipe_pair(&cmd_err, &cmd_err_w, 0) ||
	    (with_input && pipe_pair(&cmd_in_r, &cmd_in, 1))) {
		framef('F', id, "lh-agent: pipe: %s", strerror(errno));
		end_command("255");
		return;
	}
	if (shell_pid < 0)
		start_shell();
	char *q = quoted(cmd, len), in_path[64];
	pid_t me = getpid();
	if (with_input)
		snprintf(in_path, sizeof in_path, "/proc/%d/fd/%d", me, cmd_in_r);
	else
		strcpy(in_path, "/dev/null");
	size_t room = strlen(q) + 256;
	char *script = malloc(room);
	int n = snprintf(script, room, "{ eval %s\n} <%s >/proc/%d/fd/%d 2>/proc/%d/fd/%d %d>&-; echo \"%u $?\" >&%d\n",
			 q, in_path, me, cmd_out_w, me, cmd_err_w, STATUS_FD, id, STATUS_FD);
	free(q);
	state = RUNNING;
	status_len = 0;
	write_all(shell_in, script, n);
	free(script);
}

static void shell_gone(void)
{
	int wstatus = 0;
	char status[32];
	if (shell_pid > 0)
		waitpid(shell_pid, &wstatus, 0);
	shell_pid = -1;
	close_fd(&shell_in); close_fd(&shell_status);
	if (shell_noise >= 0)
		forward(shell_noise, 'L', 0);
	close_fd(&shell_noise);
	snprintf(status, sizeof status, "%d", WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus));
	if (state == RUNNING)
		end_command(status);
	start_shell();
}

static void read_status(void)
{
	for (;;) {
		ssize_t n = read(shell_status, status_buf + status_len, sizeof status_buf - 1 - status_len);
		if (n == 0) {
			shell_gone();
			return;
		}
		if (n < 0)
			return;
		status_len += n;
		status_buf[status_len] = 0;
		char *nl;
		while ((nl = strchr(status_buf, '\n'))) {
			*nl = 0;
			unsigned id;
			int st;
			if (sscanf(status_buf, "%u %d", &id, &st) == 2 && state == RUNNING && id == cur_id) {
				char s[16];
				snprintf(s, sizeof s, "%d", st);
				end_command(s);
			} else {
				framef('L', 0, "lh-agent: stray status line '%s'", status_buf);
			}
			status_len -= nl + 1 - status_buf;
			memmove(status_buf, nl + 1, status_len + 1);
		}
		if (status_len >= sizeof status_buf - 1)
			status_len = 0;
	}
}

/* -- put ------------------------------------------------------------------------------------ */
static uint64_t free_memory(void)
{
	struct sysinfo si;
	if (sysinfo(&si))
		return UINT64_MAX;
	return ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
}

static void put_begin(uint32_t id, char *path, long plen, unsigned long long size, unsigned mode)
{
	cur_id = id;
	path[plen] = 0;
	put_size = size;
	put_done = 0;
	put_failed = 0;
	struct statvfs vfs;
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = 0;
	else
		strcpy(dir, ".");
	uint64_t mem = free_memory();
	state = PUTTING;
	if (!statvfs(dir, &vfs) && vfs.f_blocks && (uint64_t)vfs.f_bavail * vfs.f_frsize < size) {
		framef('F', id, "no space for %llu bytes in %s: %llu bytes free", size, dir,
		       (unsigned long long)vfs.f_bavail * vfs.f_frsize);
		state = IDLE;          /* refused before any data: the host sends none */
		return;
	}
	if (mem != UINT64_MAX && size + PUT_RESERVE > mem) {
		framef('F', id, "no room for %llu bytes in guest memory: %llu bytes free, %u kept in reserve",
		       size, (unsigned long long)mem, PUT_RESERVE);
		state = IDLE;          /* refused before any data: the host sends none */
		return;
	}
	put_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
	if (put_fd < 0) {
		framef('F', id, "%s: %s", path, strerror(errno));
		state = IDLE;          /* refused before any data: the host sends none */
		return;
	}
	fchmod(put_fd, mode & 07777);
	frame('A', id, "", 0);
}

static void put_data(char *data, long n)
{
	if (put_failed)
		return;
	if (put_done + n > put_size) {
		framef('F', cur_id, "more data than the %llu bytes announced", (unsigned long long)put_size);
		put_failed = 1;
		close_fd(&put_fd);
		return;
	}
	for (long off = 0; off < n;) {
		ssize_t w = write(put_fd, data + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			framef('F', cur_id, "write after %llu bytes: %s", (unsigned long long)(put_done + off),
			       w < 0 ? strerror(errno) : "no progress");
			put_failed = 1;
			close_fd(&put_fd);
			return;
		}
		off += w;
	}
	put_done += n;
}

static void put_end(void)
{
	if (!put_failed) {
		if (put_done != put_size)
			framef('F', cur_id, "got %llu of %llu bytes", (unsigned long long)put_done,
			       (unsigned long long)put_size);
		else if (close(put_fd))
			framef('F', cur_id, "close: %s", strerror(errno));
		else
			frame('X', cur_id, "0", 1);
		put_fd = -1;
	}
	close_fd(&put_fd);
	state = IDLE;
}

/* -- get ------------------------------------------------------------------------------------ */
static void get_file(uint32_t id, char *path, long plen)
{
	static char buf[MAX_PAYLOAD];
	struct stat st;
	path[plen] = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		framef('F', id, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	if (S_ISDIR(st.st_mode)) {
		framef('F', id, "%s: Is a directory", path);
		close(fd);
		return;
	}
	framef('S', id, "%lld", S_ISREG(st.st_mode) ? (long long)st.st_size : -1LL);
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			framef('F', id, "read %s: %s", path, strerror(errno));
			close(fd);
			return;
		}
		if (n == 0)
			break;
		frame('D', id, buf, n);
	}
	close(fd);
	frame('X', id, "0", 1);
}

/* -- requests ------------------------------------------------------------------------------- */
static void kill_command(void)
{
	char status[32];
	int wstatus = 0;
	if (shell_pid > 0) {
		kill(-shell_pid, SIGKILL);
		waitpid(shell_pid, &wstatus, 0);
		shell_pid = -1;
	}
	close_fd(&shell_in); close_fd(&shell_status); close_fd(&shell_noise);
	snprintf(status, sizeof status, "k%d", 128 + SIGKILL);
	end_command(status);
	start_shell();
}

static void protocol_error(const char *what, const char *line)
{
	framef('P', 0, "lh-agent: %s: '%.80s'", what, line);
}

static void request(char *line)
{
	char *f[6] = { 0 };
	int nf = 0;
	for (char *tok = strtok(line, " "); tok && nf < 6; tok = strtok(NULL, " "))
		f[nf++] = tok;
	if (!nf || strlen(f[0]) != 1)
		return protocol_error("not a request", nf ? f[0] : "");
	char kind = f[0][0];
	uint32_t id = nf > 1 ? strtoul(f[1], NULL, 10) : 0;
	if (kind == 'H' && nf == 2) {
		if (state == RUNNING)
			kill_command();
		else if (state == PUTTING)
			close_fd(&put_fd), state = IDLE;
		framef('H', 0, "%s 1", f[1]);
	} else if (kind == 'C' && nf == 4 && state == IDLE) {
		long n = b64_decode(f[2]);
		if (n < 0)
			return protocol_error("bad base64 in a command", f[2]);
		run_command(id, f[2], n, f[3][0] == 'i');
	} else if ((kind == 'I' || kind == 'D') && nf == 3) {
		long n = b64_decode(f[2]);
		if (n < 0)
			return protocol_error("bad base64 in data", f[2]);
		if (id != cur_id)
			return;                 /* the rest of a request already ended (killed, failed) */
		if (state == PUTTING) {
			put_data(f[2], n);
		} else if (state == RUNNING && cmd_in >= 0 && !in_eof) {
			in_buf = realloc(in_buf, in_len + n);
			memcpy(in_buf + in_len, f[2], n);
			in_len += n;
		}
	} else if (kind == 'Z' && nf == 2) {
		if (id != cur_id)
			return;
		if (state == PUTTING)
			put_end();
		else if (state == RUNNING)
			in_eof = 1;
	} else if (kind == 'K' && nf == 2) {
		if (state == RUNNING && id == cur_id)
			kill_command();
	} else if (kind == 'P' && nf == 5 && state == IDLE) {
		long n = b64_decode(f[2]);
		if (n < 0)
			return protocol_error("bad base64 in a path", f[2]);
		put_begin(id, f[2], n, strtoull(f[3], NULL, 10), strtoul(f[4], NULL, 8));
	} else if (kind == 'G' && nf == 3 && state == IDLE) {
		long n = b64_decode(f[2]);
		if (n < 0)
			return protocol_error("bad base64 in a path", f[2]);
		get_file(id, f[2], n);
	} else {
		protocol_error(state == IDLE ? "unknown request" : "request while busy", f[0]);
	}
}

static void feed_stdin(void)
{
	while (in_off < in_len) {
		ssize_t w = write(cmd_in, in_buf + in_off, in_len - in_off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN) {         /* the command stopped reading: drop the rest */
				in_off = in_len;
				in_eof = 1;
			}
			break;
		}
		in_off += w;
	}
	if (in_off == in_len && in_eof)
		close_fd(&cmd_in);
}

int main(int argc, char **argv)
{
	static char line[MAX_LINE + 1];
	size_t line_len = 0;
	int discarding = 0;
	if (argc != 2) {
		fprintf(stderr, "usage: lh-agent /dev/hvc0\n");
		return 2;
	}
	crc_init();
	b64_init();
	signal(SIGPIPE, SIG_IGN);
	set_oom_adj("-1000");
	dev = open(argv[1], O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (dev < 0) {
		fprintf(stderr, "lh-agent: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	struct termios t;
	if (!tcgetattr(dev, &t)) {
		cfmakeraw(&t);
		tcsetattr(dev, TCSANOW, &t);
	}
	start_shell();
	frame('R', 0, "1", 1);
	for (;;) {
		struct pollfd p[6];
		int n = 0, i_dev, i_status = -1, i_noise = -1, i_out = -1, i_err = -1, i_in = -1;
		p[i_dev = n++] = (struct pollfd){ dev, POLLIN, 0 };
		if (shell_status >= 0)
			p[i_status = n++] = (struct pollfd){ shell_status, POLLIN, 0 };
		if (shell_noise >= 0)
			p[i_noise = n++] = (struct pollfd){ shell_noise, POLLIN, 0 };
		if (state == RUNNING && cmd_out >= 0)
			p[i_out = n++] = (struct pollfd){ cmd_out, POLLIN, 0 };
		if (state == RUNNING && cmd_err >= 0)
			p[i_err = n++] = (struct pollfd){ cmd_err, POLLIN, 0 };
		if (state == RUNNING && cmd_in >= 0 && (in_off < in_len || in_eof))
			p[i_in = n++] = (struct pollfd){ cmd_in, POLLOUT, 0 };
		if (poll(p, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 5;
		}
		if (i_out >= 0 && p[i_out].revents)
			forward(cmd_out, 'O', cur_id);
		if (i_err >= 0 && p[i_err].revents)
			forward(cmd_err, 'E', cur_id);
		if (i_in >= 0 && p[i_in].revents && state == RUNNING && cmd_in >= 0)
			feed_stdin();
		if (i_noise >= 0 && p[i_noise].revents && shell_noise >= 0)
			if (!forward(shell_noise, 'L', 0))
				close_fd(&shell_noise);
		if (i_status >= 0 && p[i_status].revents && shell_status >= 0)
			read_status();
		if (p[i_dev].revents) {
			ssize_t got = read(dev, line + line_len, MAX_LINE - line_len);
			if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
				return 6;
			if (got < 0)
				continue;
			size_t start = 0, end = line_len + got;
			for (size_t i = line_len; i < end; i++) {
				if (line[i] != '\n')
					continue;
				line[i] = 0;
				if (!discarding)
					request(line + start);
				discarding = 0;
				start = i + 1;
			}
			memmove(line, line + start, end - start);
			line_len = end - start;
			if (line_len == MAX_LINE) {
				line[64] = 0;
				protocol_error("line too long", line);
				line_len = 0;
				discarding = 1;
			}
			if (state == RUNNING && cmd_in >= 0)
				feed_stdin();
		}
	}
}
