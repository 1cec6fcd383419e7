/* test_config.c - peerstored's settings and log: one rule for every key
 * (the last setting wins, a command-line flag over the file) for lists as
 * for numbers; and log lines that stay whole when two threads log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "service.h"

/* Loads text as a config file into cfg (defaults first). */
static void load(config *cfg, const char *text) {
  char path[] = "/tmp/peerstore-config-XXXXXX";
  int fd = mkstemp(path);

  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  config_defaults(cfg);
  assert_int_equal(config_load(cfg, path), 0);
  unlink(path);
}

/* An admin tightening access with a flag gets what the flag says, not the
 * file's list plus the flag's. */
static void test_a_flag_replaces_a_list_from_the_file(void **state) {
  config cfg;

  (void)state;
  load(&cfg, "[peerstored]\nallow_uids = 0, 1\nallow_gids = 5\n");
  assert_int_equal(config_set(&cfg, "allow_uids", "12345"), 0);
  assert_int_equal(config_finish(&cfg), 0);
  assert_int_equal(cfg.allow_uids.n, 1);
  assert_int_equal(cfg.allow_uids.ids[0], 12345);
  assert_false(config_id_match(&cfg.allow_uids, &cfg.allow_gids, 0, 99));
  assert_true(config_id_match(&cfg.allow_uids, &cfg.allow_gids, 12345, 99));
  /* The other list keeps the file's setting. */
  assert_true(config_id_match(&cfg.allow_uids, &cfg.allow_gids, 7, 5));
  config_free(&cfg);
}

/* Within the file too, the last line of a key wins: for lists, for
 * [write] rules, and for numbers. */
static void test_the_last_setting_of_a_key_wins(void **state) {
  config cfg;
  const write_rule *r;

  (void)state;
  load(&cfg, "[peerstored]\n"
             "allow_uids = 1\n"
             "max_watches = 10\n"
             "allow_uids = 2\n"
             "max_watches = 20\n"
             "[write]\n"
             "transport = 100, @200\n"
             "other = 7\n"
             "transport = 300\n");
  assert_int_equal(config_finish(&cfg), 0);
  assert_int_equal(cfg.allow_uids.n, 1);
  assert_int_equal(cfg.allow_uids.ids[0], 2);
  assert_int_equal(cfg.max_watches, 20);
  r = config_write_rule(&cfg, "transport");
  assert_non_null(r);
  assert_true(config_id_match(&r->uids, &r->gids, 300, 0));
  assert_false(config_id_match(&r->uids, &r->gids, 100, 0));
  assert_false(config_id_match(&r->uids, &r->gids, 1, 200));
  r = config_write_rule(&cfg, "other");
  assert_non_null(r);
  assert_true(config_id_match(&r->uids, &r->gids, 7, 0));
  assert_int_equal(cfg.n_write_rules, 2);
  config_free(&cfg);
}

/* [quota] lines: records, bytes, per uid, in any order; the last line
 * of a subsystem wins; a line that limits nothing, or says something
 * else, is refused. */
static void test_quota_lines_are_parsed_or_refused(void **state) {
  static const char *const bad[] = {"", "per uid", "0 records", "12 apples",
                                    "5 records, lots", "-3"};
  const peerstore_plugin_quota *q;
  config cfg;
  size_t i;
  char text[128];

  (void)state;
  load(&cfg, "[quota]\n"
             "transport = 100000 records, 64M\n"
             "hello = 16M , per uid\n"
             "dht = 10k records\n"
             "dht = 20 records\n");
  assert_int_equal(config_finish(&cfg), 0);
  assert_int_equal(cfg.n_quotas, 3);
  q = config_quota(&cfg, "transport");
  assert_non_null(q);
  assert_int_equal(q->max_records, 100000);
  assert_int_equal(q->max_bytes, 64u << 20);
  assert_int_equal(q->flags, 0);
  q = config_quota(&cfg, "hello");
  assert_int_equal(q->max_records, 0);
  assert_int_equal(q->max_bytes, 16u << 20);
  assert_int_equal(q->flags, PEERSTORE_PLUGIN_QUOTA_PER_WRITER);
  assert_int_equal(config_quota(&cfg, "dht")->max_records, 20);
  config_free(&cfg);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    snprintf(text, sizeof(text), "[quota]\nx = %s\n", bad[i]);
    load(&cfg, text);
    assert_int_equal(config_finish(&cfg), -1);
    config_free(&cfg);
  }
}

/* A bad value is refused and leaves the setting as it was. */
static void test_a_bad_value_changes_nothing(void **state) {
  config cfg;

  (void)state;
  load(&cfg, "[peerstored]\nallow_uids = 1\n");
  assert_int_equal(config_set(&cfg, "allow_uids",
                              "2, no-such-user-peerstore-test"),
                   -1);
  assert_int_equal(cfg.allow_uids.n, 1);
  assert_int_equal(cfg.allow_uids.ids[0], 1);
  assert_int_equal(config_set(&cfg, "max_iterations", "0"), -1);
  assert_int_equal(cfg.max_iterations, 64);
  config_free(&cfg);
}

/* Two threads (the loop and the SQLite worker, in the service) log at
 * once into a pipe: every line arrives whole. */
enum { LOG_LINES = 3000 };

static void log_lines(void *arg) {
  const char *tag = arg;
  char body[301];
  int i;

  memset(body, tag[0], 300);
  body[300] = '\0';
  for (i = 0; i < LOG_LINES; i++)
    log_msg(PEERSTORE_LOG_ERROR, "%s%s", tag, body);
}

typedef struct collected {
  int fd;
  char *data;
  size_t len;
} collected;

static void collect(void *arg) {
  collected *c = arg;
  size_t cap = 1 << 20;
  ssize_t r;

  c->data = malloc(cap);
  for (;;) {
    if (c->len == cap)
      c->data = realloc(c->data, cap *= 2);
    r = read(c->fd, c->data + c->len, cap - c->len);
    if (r <= 0)
      break;
    c->len += (size_t)r;
  }
}

static void test_log_lines_from_two_threads_stay_whole(void **state) {
  uv_thread_t a, b, reader;
  collected col = {0};
  int fds[2], saved, lines = 0;
  char *line, *save = NULL;

  (void)state;
  assert_int_equal(pipe(fds), 0);
  col.fd = fds[0];
  saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  close(fds[1]);
  log_set_level(PEERSTORE_LOG_INFO);
  assert_int_equal(uv_thread_create(&reader, collect, &col), 0);
  assert_int_equal(uv_thread_create(&a, log_lines, "A"), 0);
  assert_int_equal(uv_thread_create(&b, log_lines, "B"), 0);
  uv_thread_join(&a);
  uv_thread_join(&b);
  dup2(saved, STDERR_FILENO); /* the pipe's last writer is gone */
  close(saved);
  uv_thread_join(&reader);
  close(fds[0]);
  log_set_level(-1);
  assert_non_null(col.data = realloc(col.data, col.len + 1));
  col.data[col.len] = '\0';
  for (line = strtok_r(col.data, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save)) {
    const char *msg = strstr(line, "peerstored error: ");
    size_t k;

    assert_non_null(msg);
    msg += strlen("peerstored error: ");
    assert_int_equal(strlen(msg), 301);
    for (k = 1; k < 301; k++)
      assert_int_equal(msg[k], msg[0]);
    lines++;
  }
  assert_int_equal(lines, 2 * LOG_LINES);
  free(col.data);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_flag_replaces_a_list_from_the_file),
      cmocka_unit_test(test_the_last_setting_of_a_key_wins),
      cmocka_unit_test(test_quota_lines_are_parsed_or_refused),
      cmocka_unit_test(test_a_bad_value_changes_nothing),
      cmocka_unit_test(test_log_lines_from_two_threads_stay_whole),
  };

  log_set_level(-1);
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
