/* test_config.c - peerstored's settings: one rule for every key - the
 * last setting wins, a command-line flag over the file - for lists as for
 * numbers. */
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_flag_replaces_a_list_from_the_file),
      cmocka_unit_test(test_the_last_setting_of_a_key_wins),
      cmocka_unit_test(test_a_bad_value_changes_nothing),
  };

  log_set_level(-1);
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
