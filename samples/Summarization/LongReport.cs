// The long document the summarization sample reads: a fictional transit authority's annual operations review,
// generated deterministically (fixed seed, fixed templates) so every run and every machine sees the same text.
// Each section is one line of the network in one month: ridership, punctuality, incidents, maintenance and a
// note, with numbers drawn from the seed so the sections differ the way real report sections do.
using System.Text;

namespace SwiftKV.Samples.Summarization;

/// <summary>Makes the sample's long report.</summary>
public static class LongReport
{
    static readonly string[] Lines = ["Harbour Line", "Northfield Line", "Airport Express", "Riverside Tram", "Orbital Bus Network", "Valley Line"];
    static readonly string[] Months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    static readonly string[] Causes = ["a signalling fault near the central interchange", "a points failure at the depot throat", "a trespass incident", "flooding in a cutting after heavy rain", "a shortage of qualified drivers", "overhead wire damage from a fallen tree", "a track circuit failure", "a power supply trip at a substation"];
    static readonly string[] Works = ["replaced 1.2 kilometres of worn rail", "renewed the signalling cables on the eastern section", "refurbished the passenger information screens", "completed the wheel-lathe overhaul programme for four units", "resurfaced two station platforms", "installed tactile paving at three stations", "cleared drainage along the embankments", "upgraded the ticket gates to accept contactless payment"];
    static readonly string[] Notes = ["Customer complaints fell after the new timetable bedded in.", "A school holiday reduced morning peak demand for two weeks.", "Staff sickness was above the annual average for most of the month.", "A city festival brought the busiest single day of the year.", "Fare evasion checks were doubled at the three busiest stations.", "The accessibility audit found all lifts in working order.", "Energy use per train-kilometre was the lowest on record.", "A trial of quiet carriages was extended after positive feedback."];

    /// <summary>The report with <paramref name="sections"/> sections (each about 250 tokens).</summary>
    public static string Generate(int sections = 120, int seed = 2026)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sections);
        var random = new Random(seed);
        var sb = new StringBuilder();
        sb.AppendLine("LAKESIDE REGIONAL TRANSIT AUTHORITY - ANNUAL OPERATIONS REVIEW");
        sb.AppendLine("This review reports, line by line and month by month, how the network performed: ridership, punctuality, incidents, maintenance and notable events. Figures are provisional until the audited accounts are published.");
        sb.AppendLine();
        for (int i = 0; i < sections; i++)
        {
            string line = Lines[i % Lines.Length];
            string month = Months[i / Lines.Length % Months.Length];
            int riders = random.Next(180, 2400) * 1000;
            double change = Math.Round(random.NextDouble() * 18 - 6, 1);
            double onTime = Math.Round(82 + random.NextDouble() * 16, 1);
            int cancelled = random.Next(0, 140);
            int incidents = random.Next(1, 9);
            string cause = Causes[random.Next(Causes.Length)];
            string work = Works[random.Next(Works.Length)];
            string note = Notes[random.Next(Notes.Length)];
            int delayMinutes = random.Next(200, 9000);
            int budget = random.Next(40, 900);
            double spent = Math.Round(budget * (0.7 + random.NextDouble() * 0.5));
            sb.AppendLine($"Section {i + 1}: {line}, {month}");
            sb.AppendLine($"Ridership on the {line} in {month} was {riders:N0} journeys, {(change >= 0 ? "up" : "down")} {Math.Abs(change)} percent on the same month last year. " +
                          $"Weekday peaks carried {riders / 31 * 2 / 3:N0} journeys a day on average, and weekend demand was {(change > 4 ? "unusually strong" : "in line with the seasonal pattern")}. " +
                          $"The line's share of total network journeys was {Math.Round(riders / 120000.0, 1)} percent.");
            sb.AppendLine($"Punctuality reached {onTime} percent of services within five minutes of schedule against a target of 92 percent, " +
                          $"so the line {(onTime >= 92 ? "met" : "missed")} its target. {cancelled} services were cancelled. The largest single cause of delay was {cause}, " +
                          $"which accounted for about {delayMinutes:N0} passenger-delay minutes across {incidents} separate incidents.");
            sb.AppendLine($"Maintenance teams {work}. The month's maintenance budget was {budget:N0} thousand euros and {spent:N0} thousand euros was spent, " +
                          $"{(spent > budget ? "an overspend that the operations committee has asked to be explained" : "within the approved allocation")}. " +
                          $"Planned engineering closures took place on {random.Next(0, 4)} weekends, with replacement buses provided.");
            sb.AppendLine($"{note} Safety performance: {random.Next(0, 3)} reportable events, none resulting in serious injury. " +
                          $"Passenger satisfaction in the monthly survey scored {random.Next(62, 91)} out of 100.");
            sb.AppendLine();
        }
        sb.AppendLine("End of review.");
        return sb.ToString();
    }
}
