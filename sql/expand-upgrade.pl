#!/usr/bin/perl
#
# sql/expand-upgrade.pl UPGRADE.in PARTS...
#	Writes an upgrade script to stdout: UPGRADE.in, where each line
#	"-- @function <first line of a CREATE FUNCTION in sql/parts>" becomes
#	that function's definition as the install script has it (as CREATE OR
#	REPLACE).  So a function is written once, in sql/parts, and the upgrade
#	re-creates exactly what a fresh install creates (test/t/007_upgrade.pl
#	compares the two catalogs).
#
use strict;
use warnings;

my ($in, @parts) = @ARGV;
my $parts = '';
for my $f (@parts)
{
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	$parts .= <$fh>;
}

# The statement that starts at the line $first: up to its first semicolon
# outside quotes and dollar quotes.
sub definition
{
	my ($first) = @_;
	my $at = index($parts, "\n$first\n");
	die "expand-upgrade.pl: no function starting with \"$first\" in sql/parts\n" if $at < 0;
	my $rest = substr($parts, $at + 1);
	my $pos = 0;
	my $len = length($rest);
	while ($pos < $len)
	{
		my $ch = substr($rest, $pos, 1);
		if ($ch eq ';')
		{
			my $stmt = substr($rest, 0, $pos + 1);
			$stmt =~ s/\ACREATE FUNCTION/CREATE OR REPLACE FUNCTION/;
			return $stmt;
		}
		if ($ch eq "'")
		{
			my $end = index($rest, "'", $pos + 1);
			die "expand-upgrade.pl: unterminated quote in \"$first\"\n" if $end < 0;
			$pos = $end + 1;
			next;
		}
		if ($ch eq '$' && substr($rest, $pos) =~ /\A(\$\w*\$)/)
		{
			my $tag = $1;
			my $end = index($rest, $tag, $pos + length($tag));
			die "expand-upgrade.pl: unterminated $tag in \"$first\"\n" if $end < 0;
			$pos = $end + length($tag);
			next;
		}
		if ($ch eq '-' && substr($rest, $pos, 2) eq '--')
		{
			my $end = index($rest, "\n", $pos);
			$pos = $end < 0 ? $len : $end;
			next;
		}
		$pos++;
	}
	die "expand-upgrade.pl: cannot find the end of \"$first\"\n";
}

open my $fh, '<', $in or die "$in: $!";
while (my $line = <$fh>)
{
	if ($line =~ /^-- \@function (.*\S)\s*$/)
	{
		print definition($1), "\n";
	}
	else
	{
		print $line;
	}
}
