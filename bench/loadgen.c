// loadgen: a small closed-loop load generator for bench/run.sh.
//
// One thread, epoll, no allocation on the hot path, so it costs far less CPU than the servers
// it drives. Every response is checked (HTTP status 200, and the body must contain the
// --expect string); anything else is counted as an error and a run with errors is invalid.
//
//   loadgen http  --port P [--host 127.0.0.1] [--path /mcp] --conns N --duration S [--warmup S]
//                 [--header 'K: V']... --body JSON [--expect STR] [--pid SERVER_PID]
//       N keep-alive connections, each with exactly one request outstanding (N concurrent
//       clients); a response triggers the next request on that connection at once.
//
//   loadgen stdio --outstanding N --duration S [--warmup S] --body JSON_WITH_@ID@ [--expect STR]
//                 -- COMMAND [ARGS...]
//       Spawns COMMAND, writes newline-delimited requests to its stdin keeping N requests in
//       flight (the text "@ID@" in --body is replaced with a unique integer id) and matches
//       responses on stdout by id.
//
// Output: one JSON object on stdout with calls, seconds, calls_per_s, p50/p90/p99/p999/max
// latency in microseconds, error counts, server CPU use over the measured window (from
// /proc/PID/stat) and server RSS at the end of the window (VmRSS) and its peak (VmHWM).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// common

static void die(const char *msg) {
  fprintf(stderr, "loadgen: %s (%s)\n", msg, strerror(errno));
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// Latencies of the measured window, in nanoseconds; sorted at the end for exact percentiles.
static uint64_t *lat;
static size_t lat_n, lat_cap;

static void lat_add(uint64_t ns) {
  if (lat_n == lat_cap) {
    lat_cap = lat_cap ? lat_cap * 2 : (1u << 20);
    lat = realloc(lat, lat_cap * sizeof *lat);
    if (!lat) die("out of memory");
  }
  lat[lat_n++] = ns;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(double p) {
  if (lat_n == 0) return 0;
  size_t i = (size_t)(p * (double)lat_n);  // nearest-rank
  if (i >= lat_n) i = lat_n - 1;
  return (double)lat[i] / 1000.0;
}

// CPU time (user+sys) of a process, in seconds; -1 if unavailable.
static double proc_cpu_s(int pid) {
  if (pid <= 0) return -1;
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');  // comm may contain spaces
  if (!p) return -1;
  unsigned long ut = 0, st = 0;
  // after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

// A "VmRSS:"-style field of /proc/PID/status in KiB; -1 if unavailable.
static long proc_status_kb(int pid, const char *field) {
  if (pid <= 0) return -1;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long v = -1;
  size_t fl = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, fl) == 0) {
      v = strtol(line + fl, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

// Busy time (everything but idle and iowait) summed over all CPUs, in seconds, from /proc/stat.
static double all_busy_s(void) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return -1;
  unsigned long long v[10] = {0};
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                 &v[5], &v[6], &v[7], &v[8], &v[9]);
  fclose(f);
  if (n < 8) return -1;
  // user nice system idle iowait irq softirq steal (guest time is already in user)
  unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

struct counters {
  uint64_t calls, conn_errors, non200, bad_body;
};

static void report(const char *mode, int conc, double secs, const struct counters *c, int pid, double srv_cpu,
                   double own_cpu, double busy) {
  // CPU used by everything else on the machine (other users' work, the kernel's own threads):
  // the noise this run competed with, in % of one core.
  double other = busy >= 0 && srv_cpu >= 0 && secs > 0 ? 100.0 * (busy - srv_cpu - own_cpu) / secs : -1.0;
  if (other < 0 && other > -5) other = 0;  // tick granularity
  qsort(lat, lat_n, sizeof *lat, cmp_u64);
  uint64_t errors = c->conn_errors + c->non200 + c->bad_body;
  printf("{\"mode\":\"%s\",\"concurrency\":%d,\"calls\":%llu,\"seconds\":%.3f,\"calls_per_s\":%.1f,"
         "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
         "\"errors\":%llu,\"conn_errors\":%llu,\"non200\":%llu,\"bad_body\":%llu,"
         "\"server_cpu_pct\":%.1f,\"loadgen_cpu_pct\":%.1f,\"other_cpu_pct\":%.1f,\"server_rss_kb\":%ld,"
         "\"server_hwm_kb\":%ld}\n",
         mode, conc, (unsigned long long)c->calls, secs, secs > 0 ? (double)c->calls / secs : 0.0, pct_us(0.50),
         pct_us(0.90), pct_us(0.99), pct_us(0.999), lat_n ? (double)lat[lat_n - 1] / 1000.0 : 0.0,
         (unsigned long long)errors, (unsigned long long)c->conn_errors, (unsigned long long)c->non200,
         (unsigned long long)c->bad_body, srv_cpu >= 0 && secs > 0 ? 100.0 * srv_cpu / secs : -1.0,
         secs > 0 ? 100.0 * own_cpu / secs : -1.0, other, proc_status_kb(pid, "VmRSS:"),
         proc_status_kb(pid, "VmHWM:"));
  fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// HTTP mode

#define RBUF 65536

struct conn {
  int fd;
  int connected;
  size_t woff;     // bytes of the request written
  size_t rlen;     // bytes in rbuf
  uint64_t start;  // when the request was first written
  char rbuf[RBUF];
};

static const char *req_bytes;
static size_t req_len;
static const char *expect = "\"structuredContent\"";
static struct sockaddr_in addr;
static int epfd;

static void conn_open(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->connected = 0;
  c->woff = 0;
  c->rlen = 0;
  c->start = now_ns();
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static void conn_close(struct conn *c) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

// Writes what remains of the request; arms EPOLLOUT only while something is left.
static int conn_write(struct conn *c) {
  while (c->woff < req_len) {
    ssize_t n = write(c->fd, req_bytes + c->woff, req_len - c->woff);
    if (n < 0) {
      if (errno == EAGAIN) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
      }
      return -1;
    }
    c->woff += (size_t)n;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
  return 0;
}

static const char *find_header_end(const char *b, size_t n) {
  return memmem(b, n, "\r\n\r\n", 4);
}

// Parses a complete response in c->rbuf. Returns 0 if more bytes are needed, -1 on a protocol
// error, otherwise the total response length; *status, *body_ok, *close_after are set.
static long parse_response(struct conn *c, int *status, int *body_ok, int *close_after) {
  const char *b = c->rbuf;
  const char *he = find_header_end(b, c->rlen);
  if (!he) return c->rlen >= RBUF ? -1 : 0;
  size_t hlen = (size_t)(he - b) + 4;
  if (c->rlen < 12 || memcmp(b, "HTTP/1.", 7) != 0) return -1;
  *status = atoi(b + 9);
  long clen = -1;
  int chunked = 0;
  *close_after = 0;
  // headers
  const char *p = memchr(b, '\n', hlen) + 1;
  while (p < he) {
    const char *eol = memchr(p, '\n', (size_t)(he + 2 - p));
    if (!eol) break;
    size_t ll = (size_t)(eol - p);
    if (ll > 15 && strncasecmp(p, "content-length:", 15) == 0) clen = strtol(p + 15, NULL, 10);
    else if (ll > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0 && memmem(p, ll, "chunked", 7)) chunked = 1;
    else if (ll > 11 && strncasecmp(p, "connection:", 11) == 0 && memmem(p, ll, "close", 5)) *close_after = 1;
    p = eol + 1;
  }
  const char *body = b + hlen;
  size_t avail = c->rlen - hlen;
  if (chunked) {
    // Walk the chunks; the body check runs over each chunk's data (responses here are small
    // and arrive as one chunk; a match split across chunks would count as a bad body).
    size_t off = 0;
    int found = 0;
    for (;;) {
      const char *crlf = memmem(body + off, avail - off, "\r\n", 2);
      if (!crlf) return c->rlen >= RBUF ? -1 : 0;
      unsigned long sz = strtoul(body + off, NULL, 16);
      size_t data = (size_t)(crlf - body) + 2;
      if (sz == 0) {
        // last chunk; no trailers expected: "0\r\n\r\n"
        if (avail < data + 2) return 0;
        *body_ok = found;
        return (long)(hlen + data + 2);
      }
      if (avail < data + sz + 2) return c->rlen >= RBUF ? -1 : 0;
      if (!found && memmem(body + data, sz, expect, strlen(expect))) found = 1;
      off = data + sz + 2;
    }
  }
  if (clen < 0) clen = 0;
  if (hlen + (size_t)clen > RBUF) return -1;
  if (avail < (size_t)clen) return 0;
  *body_ok = memmem(body, (size_t)clen, expect, strlen(expect)) != NULL;
  return (long)(hlen + (size_t)clen);
}

static int run_http(int argc, char **argv) {
  const char *host = "127.0.0.1", *path = "/mcp", *body = NULL;
  int port = 0, conns = 1, pid = 0;
  double duration = 10, warmup = 2;
  char headers[8192] = "";
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", a); return 2; }
    if (!strcmp(a, "--host")) host = v;
    else if (!strcmp(a, "--port")) port = atoi(v);
    else if (!strcmp(a, "--path")) path = v;
    else if (!strcmp(a, "--conns")) conns = atoi(v);
    else if (!strcmp(a, "--duration")) duration = atof(v);
    else if (!strcmp(a, "--warmup")) warmup = atof(v);
    else if (!strcmp(a, "--body")) body = v;
    else if (!strcmp(a, "--expect")) expect = v;
    else if (!strcmp(a, "--pid")) pid = atoi(v);
    else if (!strcmp(a, "--header")) {
      if (strlen(headers) + strlen(v) + 3 > sizeof headers) { fprintf(stderr, "loadgen: headers too long\n"); return 2; }
      strcat(headers, v);
      strcat(headers, "\r\n");
    } else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
    i++;
  }
  if (!port || !body || conns < 1) { fprintf(stderr, "loadgen http: --port, --body and --conns are required\n"); return 2; }
  size_t cap = strlen(body) + strlen(headers) + 512;
  char *req = malloc(cap);
  req_len = (size_t)snprintf(req, cap,
                             "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %zu\r\n%s\r\n%s", path, host,
                             port, strlen(body), headers, body);
  req_bytes = req;
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "loadgen: bad host %s\n", host); return 2; }

  epfd = epoll_create1(EPOLL_CLOEXEC);
  struct conn *cs = calloc((size_t)conns, sizeof *cs);
  if (!cs) die("calloc");
  for (int i = 0; i < conns; i++) conn_open(&cs[i]);

  struct counters cnt = {0};
  uint64_t t_begin = now_ns();
  uint64_t t_measure = t_begin + (uint64_t)(warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
  int measuring = 0;
  double srv_cpu0 = -1, own_cpu0 = 0, busy0 = -1;
  struct epoll_event evs[512];
  for (;;) {
    uint64_t t = now_ns();
    if (!measuring && t >= t_measure) {
      measuring = 1;
      memset(&cnt, 0, sizeof cnt);
      lat_n = 0;
      srv_cpu0 = proc_cpu_s(pid);
      own_cpu0 = self_cpu_s();
      busy0 = all_busy_s();
      t_measure = t;
    }
    if (t >= t_end) break;
    int n = epoll_wait(epfd, evs, 512, 50);
    if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
    for (int k = 0; k < n; k++) {
      struct conn *c = evs[k].data.ptr;
      if (c->fd < 0) continue;
      if (!c->connected) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { cnt.conn_errors++; conn_close(c); usleep(1000); conn_open(c); continue; }
        c->connected = 1;
        c->start = now_ns();
      }
      if (evs[k].events & EPOLLOUT && c->woff < req_len) {
        if (conn_write(c) < 0) { cnt.conn_errors++; conn_close(c); conn_open(c); continue; }
      }
      if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
          ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
          if (r < 0 && errno == EAGAIN) break;
          if (r <= 0) { cnt.conn_errors++; conn_close(c); conn_open(c); break; }
          c->rlen += (size_t)r;
          int status = 0, ok = 0, close_after = 0;
          long used = parse_response(c, &status, &ok, &close_after);
          if (used == 0) continue;
          if (used < 0) { cnt.conn_errors++; conn_close(c); conn_open(c); break; }
          uint64_t done = now_ns();
          if (done >= t_measure && measuring) {
            if (status != 200) cnt.non200++;
            else if (!ok) cnt.bad_body++;
            else { cnt.calls++; lat_add(done - c->start); }
          }
          if ((size_t)used != c->rlen) { cnt.conn_errors++; }  // unsolicited bytes: no pipelining here
          if (close_after) { conn_close(c); conn_open(c); break; }
          c->rlen = 0;
          c->woff = 0;
          c->start = now_ns();
          if (conn_write(c) < 0) { cnt.conn_errors++; conn_close(c); conn_open(c); }
          break;
        }
      }
    }
  }
  uint64_t t_stop = now_ns();
  double secs = (double)(t_stop - t_measure) / 1e9;
  double srv_cpu = srv_cpu0 >= 0 ? proc_cpu_s(pid) - srv_cpu0 : -1;
  double own_cpu = self_cpu_s() - own_cpu0;
  double busy = busy0 >= 0 ? all_busy_s() - busy0 : -1;
  report("http", conns, secs, &cnt, pid, srv_cpu, own_cpu, busy);
  for (int i = 0; i < conns; i++) if (cs[i].fd >= 0) close(cs[i].fd);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// stdio mode

#define SLOTS (1u << 16)
static uint64_t slot_id[SLOTS], slot_start[SLOTS];

static int run_stdio(int argc, char **argv) {
  const char *body = NULL;
  int outstanding = 1;
  double duration = 10, warmup = 2;
  int i = 2;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) { i++; break; }
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", a); return 2; }
    if (!strcmp(a, "--outstanding")) outstanding = atoi(v);
    else if (!strcmp(a, "--duration")) duration = atof(v);
    else if (!strcmp(a, "--warmup")) warmup = atof(v);
    else if (!strcmp(a, "--body")) body = v;
    else if (!strcmp(a, "--expect")) expect = v;
    else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
    i++;
  }
  if (!body || i >= argc || outstanding < 1 || (unsigned)outstanding > SLOTS / 4) {
    fprintf(stderr, "loadgen stdio: --body and -- COMMAND are required\n");
    return 2;
  }
  const char *mark = strstr(body, "@ID@");
  if (!mark) { fprintf(stderr, "loadgen stdio: --body must contain @ID@\n"); return 2; }
  size_t pre_len = (size_t)(mark - body);
  const char *post = mark + 4;
  size_t post_len = strlen(post);

  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    execvp(argv[i], argv + i);
    perror("exec");
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  int wfd = in_pipe[1], rfd = out_pipe[0];
  fcntl(wfd, F_SETFL, O_NONBLOCK);
  fcntl(rfd, F_SETFL, O_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);

  // Output buffer for requests not yet written, and input buffer for partial lines.
  size_t wcap = 1 << 20, wlen = 0, woff = 0;
  char *wbuf = malloc(wcap);
  size_t rcap = 1 << 20, rlen = 0;
  char *rbuf = malloc(rcap);
  uint64_t next_id = 1;
  int inflight = 0;
  struct counters cnt = {0};
  uint64_t t_begin = now_ns();
  uint64_t t_measure = t_begin + (uint64_t)(warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
  int measuring = 0;
  double srv_cpu0 = -1, own_cpu0 = 0, busy0 = -1;
  int dead = 0;

  for (;;) {
    uint64_t t = now_ns();
    if (!measuring && t >= t_measure) {
      measuring = 1;
      memset(&cnt, 0, sizeof cnt);
      lat_n = 0;
      srv_cpu0 = proc_cpu_s(pid);
      own_cpu0 = self_cpu_s();
      busy0 = all_busy_s();
      t_measure = t;
    }
    if (t >= t_end || dead) break;
    // Top up the requests in flight.
    while (inflight < outstanding) {
      char idbuf[32];
      int il = snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)next_id);
      size_t need = pre_len + (size_t)il + post_len + 1;
      if (wlen + need > wcap) break;
      memcpy(wbuf + wlen, body, pre_len);
      memcpy(wbuf + wlen + pre_len, idbuf, (size_t)il);
      memcpy(wbuf + wlen + pre_len + il, post, post_len);
      wbuf[wlen + need - 1] = '\n';
      wlen += need;
      unsigned s = (unsigned)(next_id % SLOTS);
      slot_id[s] = next_id;
      slot_start[s] = now_ns();
      next_id++;
      inflight++;
    }
    if (woff < wlen) {
      ssize_t w = write(wfd, wbuf + woff, wlen - woff);
      if (w > 0) woff += (size_t)w;
      else if (w < 0 && errno != EAGAIN) { cnt.conn_errors++; dead = 1; }
      if (woff == wlen) woff = wlen = 0;
    }
    struct pollfd pf[2] = {{.fd = rfd, .events = POLLIN}, {.fd = wfd, .events = woff < wlen ? POLLOUT : 0}};
    int pr = poll(pf, 2, 50);
    if (pr < 0) { if (errno == EINTR) continue; die("poll"); }
    if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      for (;;) {
        if (rlen == rcap) { rcap *= 2; rbuf = realloc(rbuf, rcap); }
        ssize_t r = read(rfd, rbuf + rlen, rcap - rlen);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) { cnt.conn_errors++; dead = 1; break; }
        rlen += (size_t)r;
      }
      size_t off = 0;
      for (;;) {
        char *nl = memchr(rbuf + off, '\n', rlen - off);
        if (!nl) break;
        size_t ll = (size_t)(nl - (rbuf + off));
        char *line = rbuf + off;
        uint64_t done = now_ns();
        char *idp = memmem(line, ll, "\"id\":", 5);
        if (idp) {
          uint64_t id = strtoull(idp + 5, NULL, 10);
          unsigned s = (unsigned)(id % SLOTS);
          if (slot_id[s] == id && id) {
            slot_id[s] = 0;
            inflight--;
            int ok = memmem(line, ll, expect, strlen(expect)) != NULL;
            if (measuring) {
              if (!ok) cnt.bad_body++;
              else { cnt.calls++; lat_add(done - slot_start[s]); }
            }
          } else if (measuring) cnt.bad_body++;
        }  // lines without an id (notifications) are ignored
        off += ll + 1;
      }
      memmove(rbuf, rbuf + off, rlen - off);
      rlen -= off;
    }
  }
  uint64_t t_stop = now_ns();
  double secs = (double)(t_stop - t_measure) / 1e9;
  double srv_cpu = srv_cpu0 >= 0 ? proc_cpu_s(pid) - srv_cpu0 : -1;
  double own_cpu = self_cpu_s() - own_cpu0;
  double busy = busy0 >= 0 ? all_busy_s() - busy0 : -1;
  report("stdio", outstanding, secs, &cnt, pid, srv_cpu, own_cpu, busy);
  close(wfd);  // EOF on the server's stdin: it should exit
  for (int k = 0; k < 100; k++) {
    // keep draining its stdout so it can finish writing
    char tmp[65536];
    while (read(rfd, tmp, sizeof tmp) > 0) {}
    if (waitpid(pid, NULL, WNOHANG) == pid) return 0;
    usleep(50000);
  }
  fprintf(stderr, "loadgen: server did not exit 5 s after stdin closed; sending SIGTERM\n");
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "http")) return run_http(argc, argv);
  if (argc >= 2 && !strcmp(argv[1], "stdio")) return run_stdio(argc, argv);
  fprintf(stderr, "usage: loadgen http ... | loadgen stdio ... -- COMMAND (see the comment at the top of loadgen.c)\n");
  return 2;
}
