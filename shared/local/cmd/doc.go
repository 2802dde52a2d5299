// Package cmd holds nothing itself: its subdirectories are the local
// commands (dev, invoke, standins, bench).
package cmd
