// Package moduletest holds the tests that look at shared/client from
// outside: a program in another module builds against it, and its import
// graph stays lean for the backends that import it. It has no code of its
// own; its tests need no local stack, so they run in seconds.
package moduletest
