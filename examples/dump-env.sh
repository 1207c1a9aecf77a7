#!/bin/sh
# Print every environment variable this handler got, one NAME=value a line, sorted; then exit.
# (The shell adds PWD itself: it is not one of the variables wsexec sets.)
env | sort
