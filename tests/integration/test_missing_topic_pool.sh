#!/usr/bin/env bash
# ctest: parallel
# test_missing_topic.sh with a shared producer pool of one
# (relay.kafka_producers: 1): the source waiting for its topic does not hold
# the producer, the other source goes on, a topic deleted while in use makes
# the pool replace its producer, and every event arrives exactly once.
POOL_PRODUCERS=1 exec "$(cd "$(dirname "$0")" && pwd)/test_missing_topic.sh"
