"""Driving a system that is not paysim: an HTTP authorization endpoint, or a pair of Kafka
topics (payments in, outcomes out), with paysim's payments on paysim's schedule."""
